"""dev/kernels/kernel_sass.py: compiles the forward kernel for sm_90 without a GPU (Triton's own
ptxas and cuobjdump) and counts what the hardware would execute.

It runs in a subprocess without TRITON_INTERPRET (which the kernel tests set for this process on
machines without a GPU). The counts must be plausible and must see the counting code: the counting
SiLU loop executes more instructions per element than the uncounted SiLU kernel, and ReLU's far
fewer than SiLU's.

    python -m pytest dev/kernels
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[2]


def _sass(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The repository first, then whatever this process was given (packages installed beside it).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(REPO / "dev" / "kernels" / "kernel_sass.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernel_sass_counts_instructions_of_each_variant():
    silu_count = _sass("--tile", "16x64x4", "--row-tiles", "16", "--histogram")
    silu_plain = _sass("--no-count", "--tile", "16x128x4", "--row-tiles", "1")
    relu_count = _sass("--activation", "relu", "--tile", "32x128x4", "--row-tiles", "4")
    assert silu_count["loop"] and not silu_plain["loop"]
    for report in (silu_count, silu_plain, relu_count):
        assert 16 <= report["registers"] <= 255 and 5 < report["per_element"] < 200
    assert silu_count["per_element"] > silu_plain["per_element"]
    assert relu_count["per_element"] < silu_count["per_element"] / 2
    # SiLU's fast exp2 and reciprocal are on the common path: two MUFU ops per element; the
    # exact fix-up (one block per element, holding the exact exp) is not.
    histogram = silu_count["histogram"]
    elements = 16 * 64 / 128
    assert histogram.get("MUFU.EX2", 0) == elements and histogram.get("MUFU.RCP", 0) == elements
    assert silu_count["fixup_blocks"] == elements
    assert silu_count["common_path"] < silu_count["instructions"]


def test_kernel_sass_fast_silu_executes_fewer_instructions_than_exact():
    fast = _sass("--tile", "16x64x4", "--row-tiles", "16")
    exact = _sass("--tile", "16x64x4", "--row-tiles", "16", "--exact-silu")
    assert exact["fixup_blocks"] == 0 and exact["common_path"] == exact["instructions"]
    # The exact exp (11 instructions) and IEEE division with its range check leave the common path;
    # the fast exp2/reciprocal and the midpoint test (about 10) replace them.
    assert fast["common_per_element"] < exact["per_element"] - 8

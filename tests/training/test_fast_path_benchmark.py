"""benchmarks/fast_path_ablation.py on the CPU: every variant runs and is reported, counters on.

The script raises if the counters counted nothing; here it runs a tiny model end to end through
the real trainer, and the record must hold every variant's rotated blocks and its gain over the
plain path, and the summary printer must read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_fast_path_ablation_reports_every_variant(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "fast_path_ablation.py"), "--model", "tiny", "--seq", "32"]
    cmd += ["--vocab", "256", "--micro-batch", "2", "--rounds", "2", "--block-steps", "1", "--warmup", "1"]
    cmd += ["--counter-impl", "reference", "--tau", "0.01", "--workdir", str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    record = json.loads(line)
    assert record["benchmark"] == "fast_path_ablation" and record["first_step_s"] > 0
    names = ["plain", "bshd_layout", "fused_projections", "fused_residual_norm", "all"]
    assert list(record["variants"]) == names
    for name in names:
        variant = record["variants"][name]
        assert len(variant["block_step_s"]) == 2 and variant["tokens_per_sec"] > 0
        assert ("gain_median" in variant) == (name != "plain")
    summary = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "summarize_fast_path.py")],
        input=line + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(name in summary.stdout for name in names), summary.stdout

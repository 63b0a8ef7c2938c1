"""benchmarks/counter_cost.py on the CPU: the off/on blocks really switch the counting.

The script raises if an "off" block counted anything or an "on" block counted nothing (or no
threshold hits); here it runs a tiny model end to end through the real trainer and the record it
prints must hold both modes' timings, block by block in the interleaved order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_counter_cost_alternates_and_reports_both_modes(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "counter_cost.py"),
        "--model",
        "tiny",
        "--seq",
        "32",
        "--vocab",
        "256",
        "--micro-batch",
        "2",
        "--blocks",
        "2",
        "--block-steps",
        "2",
        "--warmup",
        "1",
        "--counter-impl",
        "reference",
        "--tau",
        "0.01",
        "--workdir",
        str(tmp_path),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert record["benchmark"] == "counter_cost" and record["blocks"] == 2
    assert len(record["block_step_s"]["off"]) == 2 and len(record["block_step_s"]["on"]) == 2
    assert record["off_step_s"] > 0 and record["on_step_s"] > 0
    assert record["cost_min"] <= record["cost_median"] <= record["cost_max"]

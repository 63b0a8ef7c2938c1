"""Shared by the benchmarks: run megasparse.train on a config, read back, time GPU work, print."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_training(run_dir: Path, cfg: dict, nproc: int) -> subprocess.CompletedProcess:
    """Writes run_dir/run.yaml and runs it (through the DeepSpeed launcher when nproc > 1)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(cfg))
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(nproc),
            "--master_port",
            str(29500 + hash(str(run_dir)) % 1000),
            "--module",
        ]
    else:
        launcher = [sys.executable, "-m"]
    cmd = launcher + ["megasparse.train", "--config", str(run_dir / "run.yaml")]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (run_dir / "log.txt").write_text(proc.stdout + proc.stderr)
    return proc


def median_after_first(series: dict, tag: str) -> float:
    """Median of a scalar's logged windows, leaving out the first (it holds the warm-up)."""
    values = [v for _, v in series[tag]]
    return statistics.median(values[1:] or values)


def emit(record: dict, out: Optional[str]) -> None:
    """One JSON line to stdout, appended to `out` too when given."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` CUDA-event-timed calls after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]

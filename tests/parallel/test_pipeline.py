"""Pipeline parallelism (PP=2, DeepSpeed's PipelineEngine) against the plain one-process model.

The checks live in pp_checks.py and run in one pair of processes started by the real
``deepspeed`` launcher (process start-up is the cost); each test here reports one check:
the same initial parameters, the same first-step loss and per-layer activation counts, the
same loss curve and evaluation loss, a checkpoint round trip through our checkpoint flow, and
activation checkpointing that recomputes without counting twice. A second launch runs TP=2 ×
PP=2 on 4 ranks (sequence parallelism, activation checkpointing) against the same reference.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pp_checks
import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, tensor: int, names: list[str]) -> dict:
    """Runs pp_checks.py on 2 × ``tensor`` ranks; maps each check to None or its failure text."""
    world = 2 * tensor
    beside_python = Path(sys.executable).with_name("deepspeed")
    launcher = str(beside_python) if beside_python.exists() else "deepspeed"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [
        launcher,
        "--num_gpus",
        str(world),
        "--master_port",
        str(_free_port()),
        str(Path(pp_checks.__file__)),
        "--out",
        str(out),
        "--tensor",
        str(tensor),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    results: dict = {name: None for name in names}
    for rank in range(world):
        path = out / f"rank{rank}.json"
        if not path.exists():
            failure = (
                f"rank {rank} wrote no results (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
            return {name: failure for name in results}
        for name, error in json.loads(path.read_text()).items():
            if error is not None:
                results[name] = (results[name] or "") + f"\n[rank {rank}] {error}"
    return results


@pytest.fixture(scope="module")
def pp2_results(tmp_path_factory) -> dict:
    return launch(tmp_path_factory.mktemp("pp2"), 1, pp_checks.CHECKS)


@pytest.fixture(scope="module")
def tp2_pp2_results(tmp_path_factory) -> dict:
    return launch(tmp_path_factory.mktemp("tp2pp2"), 2, pp_checks.TP_CHECKS)


@pytest.mark.parametrize("name", pp_checks.CHECKS)
def test_pp2(pp2_results, name):
    error = pp2_results[name]
    assert error is None, error


@pytest.mark.parametrize("name", pp_checks.TP_CHECKS)
def test_tp2_pp2(tp2_pp2_results, name):
    error = tp2_pp2_results[name]
    assert error is None, error

"""Runs the two-process tensor-parallel checks once per session (process start-up is the cost).

``tp2_results`` spawns 2 gloo processes that run every check in ``tp_checks.CHECKS`` in order
and maps each check's name to None (passed) or the failure text of the rank(s) that failed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))  # spawned children import tp_checks by name

import tp_checks  # noqa: E402

WORLD = 2
DEADLINE_S = 240


@pytest.fixture(scope="session")
def tp2_results(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("tp2")
    init_file, out_dir = tmp / "init", tmp / "out"
    out_dir.mkdir()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(tp_checks.worker, args=(WORLD, str(init_file), str(out_dir)),
                             nprocs=WORLD, start_method="spawn", join=False)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if ctx.join(timeout=5):
                break
        except Exception:  # a rank died; its missing result file reports it below
            break
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            break
    results: dict = {name: None for name, _ in tp_checks.CHECKS}
    for rank in range(WORLD):
        path = out_dir / f"rank{rank}.json"
        if not path.exists():
            return {name: f"rank {rank} wrote no results (crashed or timed out)" for name in results}
        for name, error in json.loads(path.read_text()).items():
            if error is not None:
                results[name] = (results[name] or "") + f"\n[rank {rank}] {error}"
    return results

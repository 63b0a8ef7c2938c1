"""CETT calibration (thresholds, CETT, PPL ratio, activation ratio, PPL-p% search) under TP=2,
TP=2 with sequence parallelism and DP=2, against one process, in 2 spawned gloo processes.

The checks live in cett_tp_checks.py and all run in one pair of processes, started once per
module; each test here reports one of them. The grid of a layer is a function of the global
norm matrix only, so τ agree up to float rounding of h (at most one grid step; usually exactly).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import torch.multiprocessing as mp

import cett_tp_checks
from megasparse.sparsity.cett import candidate_thresholds, strided_entries

WORLD = 2
DEADLINE_S = 180


@pytest.fixture(scope="module")
def cett_results(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("cett_tp2")
    init_file, out_dir = tmp / "init", tmp / "out"
    out_dir.mkdir()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(cett_tp_checks.worker, args=(WORLD, str(init_file), str(out_dir)),
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
    results: dict = {name: None for name, _ in cett_tp_checks.CHECKS}
    numbers: dict = {}
    for rank in range(WORLD):
        path = out_dir / f"rank{rank}.json"
        if not path.exists():
            return {name: f"rank {rank} wrote no results (crashed or timed out)" for name in results}
        doc = json.loads(path.read_text())
        numbers[rank] = doc["numbers"]
        for name, error in doc["results"].items():
            if error is not None:
                results[name] = (results[name] or "") + f"\n[rank {rank}] {error}"
    print(json.dumps(numbers[0], indent=1))  # the measured gaps, visible with pytest -s
    return results


@pytest.mark.parametrize("name", [name for name, _ in cett_tp_checks.CHECKS])
def test_cett_two_processes(cett_results, name):
    error = cett_results[name]
    assert error is None, error


def test_strided_blocks_make_up_the_one_process_subsample():
    """Blocks of a [T, f] matrix (any token / neuron split) pick exactly flat[::stride] together."""
    torch.manual_seed(0)
    full = torch.rand(37, 24)
    flat = full.reshape(-1)
    for stride in (1, 5, 24, 31, 100):
        picks = []
        for rows in (slice(0, 10), slice(10, 37)):  # "DP ranks"
            for cols in (slice(0, 8), slice(8, 16), slice(16, 24)):  # "TP ranks"
                first = rows.start * 24 + cols.start
                picks.append(strided_entries(full[rows, cols], stride, first, 24))
        assert sorted(torch.cat(picks).tolist()) == sorted(flat[::stride].tolist())
    grid = candidate_thresholds(full, 9)
    assert float(grid[-1]) == pytest.approx(float(torch.quantile(flat, 0.99)))

"""CETT calibration (thresholds, CETT, PPL ratio, activation ratio, PPL-p% search) under TP=2,
TP=2 with sequence parallelism and DP=2, against one process, in 2 spawned gloo processes.

The checks live in cett_tp_checks.py and all run in one pair of processes, started once per
module; each test here reports one of them. The grid of a layer is a function of the global
norm matrix only, so τ agree up to float rounding of h (at most one grid step; usually exactly).
"""

from __future__ import annotations

import json

import cett_tp_checks
import pytest
import torch
from spawned_checks import merge_failures, spawn_and_collect

from megasparse.sparsity.cett import candidate_thresholds, strided_entries

WORLD = 2
DEADLINE_S = 180


@pytest.fixture(scope="module")
def cett_results(tmp_path_factory) -> dict:
    docs = spawn_and_collect(cett_tp_checks.worker, WORLD, tmp_path_factory.mktemp("cett_tp2"), DEADLINE_S)
    results = merge_failures(
        [name for name, _ in cett_tp_checks.CHECKS], [None if d is None else d["results"] for d in docs]
    )
    if docs[0] is not None:
        print(json.dumps(docs[0]["numbers"], indent=1))  # the measured gaps, visible with pytest -s
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

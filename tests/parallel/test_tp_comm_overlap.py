"""train.tp_comm_overlap against the plain path, TP=2 in 2 gloo processes (overlap_checks.py).

The overlapped column layers must compute what the separate collectives compute: the same
outputs and gradients of input, weight and bias, with SP and without, fused projections on and
off, q/k/v biases; under SP they keep only the local input shard for the backward; and the
backward really runs each GEMM between the start and the wait of the collective it hides.
"""

import json

import overlap_checks
import pytest
from spawned_checks import merge_failures, spawn_and_collect

WORLD = 2
DEADLINE_S = 240


@pytest.fixture(scope="module")
def overlap_results(tmp_path_factory) -> tuple[dict, list]:
    tmp = tmp_path_factory.mktemp("overlap")
    docs = spawn_and_collect(overlap_checks.worker, WORLD, tmp, DEADLINE_S)
    diffs = [json.loads(p.read_text()) for p in sorted((tmp / "out").glob("max_diff_rank*.json"))]
    return merge_failures([name for name, _ in overlap_checks.CHECKS], docs), diffs


@pytest.mark.parametrize("name", [name for name, _ in overlap_checks.CHECKS])
def test_overlap_matches_plain(overlap_results, name):
    results, diffs = overlap_results
    assert results[name] is None, results[name]
    per_rank = [{key: value for key, value in d.items() if key.startswith(name)} for d in diffs]
    print(f"{name}: largest |overlap - plain| per rank: {per_rank}")

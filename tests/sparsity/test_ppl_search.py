"""CETT-PPL-p% search: monotone in the CETT value, hits its target, averages the way docs/sparsing-law.md §1.3 says."""

from __future__ import annotations

import math

import pytest
import torch
from sparse_fixtures import greedy_batches, one_thread, tiny_model  # noqa: F401

from megasparse.sparsity.ppl_search import evaluate_cett, search_cett_for_ppl


@pytest.fixture(scope="module", params=["relu", "silu"])
def model_and_batches(request):
    torch.set_num_threads(1)
    model = tiny_model(request.param)
    return model, greedy_batches(model, 2)


def test_larger_cett_means_larger_thresholds_sparser_and_worse(model_and_batches):
    model, batches = model_and_batches
    evals = [evaluate_cett(model, batches, c) for c in (0.05, 0.15, 0.3, 0.5)]
    for a, b in zip(evals, evals[1:]):
        assert bool((b.layer_thresholds > a.layer_thresholds).all())
        assert b.activation_ratio < a.activation_ratio
        assert b.ppl_ratio > a.ppl_ratio
    assert evals[-1].ppl_ratio > 1.1 and 0.0 < evals[-1].activation_ratio < 0.5


def test_ppl_ratio_is_the_mean_of_per_batch_ratios(model_and_batches):
    model, batches = model_and_batches
    both = evaluate_cett(model, batches, 0.2)
    single = [evaluate_cett(model, [b], 0.2) for b in batches]
    assert both.ppl_ratio == pytest.approx(sum(s.ppl_ratio for s in single) / 2, rel=1e-9)
    assert both.ppl_ratio != pytest.approx(math.exp(both.sparse_loss - both.dense_loss), rel=1e-9)
    assert torch.allclose(both.batch_thresholds, torch.cat([s.batch_thresholds for s in single]))
    assert torch.allclose(both.layer_thresholds, both.batch_thresholds.mean(0))


@pytest.mark.parametrize("p", [1.0, 5.0])
def test_search_reaches_the_target_within_tolerance(model_and_batches, p):
    model, batches = model_and_batches
    res = search_cett_for_ppl([model], [batches], p=p, tolerance=1e-3)
    target = 1 + p / 100
    assert res.target_ratio == target
    assert res.high - res.low <= 1e-3 and res.low < res.cett < res.high
    assert res.iterations == 10
    below = [r for c, r in res.history if c == res.low]
    above = [r for c, r in res.history if c == res.high]
    assert all(r < target for r in below) and all(r >= target for r in above)
    assert abs(res.ppl_ratio - target) < p / 100  # the bracket is ~1e-3 wide; ratios move in steps
    assert 0.0 < res.evaluations[0].activation_ratio < 1.0


def test_several_checkpoints_are_searched_on_their_mean_ratio():
    a, b = tiny_model("relu", seed=1), tiny_model("relu", seed=2)
    batches_a, batches_b = greedy_batches(a, 2), greedy_batches(b, 2)
    res = search_cett_for_ppl([a, b], [batches_a, batches_b], p=1.0, tolerance=1e-2)
    ra, rb = (evaluate_cett(m, bs, res.cett).ppl_ratio for m, bs in ((a, batches_a), (b, batches_b)))
    assert res.ppl_ratio == pytest.approx((ra + rb) / 2)
    assert len(res.evaluations) == 2


def test_bad_search_arguments():
    m = tiny_model()
    with pytest.raises(ValueError, match="one batch set per model"):
        search_cett_for_ppl([m], [], p=1.0)
    with pytest.raises(ValueError, match="tolerance"):
        search_cett_for_ppl([m], [greedy_batches(m, 1)], tolerance=0)

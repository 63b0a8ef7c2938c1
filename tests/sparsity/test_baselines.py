"""FAT-ε, top-k (per token and the authors' batch-level variant), zero threshold: hand-checked cases."""

from __future__ import annotations

import pytest
import torch
from sparse_fixtures import greedy_batches, one_thread, tiny_model  # noqa: F401

from megasparse.sparsity.baselines import (
    baseline_mask,
    cett_mask,
    fat_mask,
    topk_batch_mask,
    topk_per_token_mask,
    zero_threshold_mask,
)
from megasparse.sparsity.measure import evaluate_baseline

S = torch.tensor([[[0.0, -0.3, 0.5, 0.1], [0.9, 0.2, -0.05, 0.0]]])  # [b=1, s=2, f=4]


def test_zero_threshold_drops_exact_zeros_only():
    assert zero_threshold_mask(S).tolist() == [[[False, True, True, True], [True, True, True, False]]]


def test_fat_uses_absolute_value():
    assert fat_mask(S, 0.2).tolist() == [[[False, True, True, False], [True, True, False, False]]]
    assert fat_mask(S, 0.0).tolist() == zero_threshold_mask(S).tolist()


def test_topk_per_token_keeps_k_per_row():
    # half of f=4 → 2 per token by |s|: token 0 keeps {0.5, -0.3}, token 1 keeps {0.9, 0.2}
    assert topk_per_token_mask(S, 0.5).tolist() == [[[False, True, True, False], [True, True, False, False]]]


def test_topk_batch_keeps_k_over_all_tokens():
    # 3/8 of all 8 entries → the three largest |s| overall: 0.9, 0.5, -0.3 (token 1 keeps ONE)
    mask = topk_batch_mask(S, 3 / 8)
    assert mask.tolist() == [[[False, True, True, False], [True, False, False, False]]]
    assert topk_per_token_mask(S, 3 / 8).sum() == 4  # round(1.5) = 2 per token: not the same thing


def test_cett_mask_compares_h_with_per_neuron_bounds():
    h = torch.tensor([[1.0, -2.0, 0.5]])
    assert cett_mask(h, torch.tensor([1.0, 2.5, 0.5])).tolist() == [[True, False, True]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="fraction"):
        topk_per_token_mask(S, 1.5)
    with pytest.raises(ValueError, match="unknown method"):
        baseline_mask("nope", S, 0.1)


def test_baselines_on_a_model():
    model = tiny_model("relu")
    batches = greedy_batches(model, 2)
    dense, sparse, ratio, stats = evaluate_baseline(model, batches, "zero", 0.0)
    assert ratio == pytest.approx(1.0, abs=1e-6) and sparse == pytest.approx(dense, abs=1e-6)  # zeros add nothing
    zero_ratio = stats.activation_ratio()
    assert 0.0 < zero_ratio < 1.0
    _, _, fat_ratio, fat_stats = evaluate_baseline(model, batches, "fat", 0.5)
    assert fat_stats.activation_ratio() < zero_ratio and fat_ratio != pytest.approx(1.0, abs=1e-4)
    _, _, _, top = evaluate_baseline(model, batches, "topk", 0.25)
    assert top.activation_ratio() == pytest.approx(40 / 160)  # exactly k per token in every layer
    _, _, _, top_b = evaluate_baseline(model, batches, "topk-batch", 0.25)
    assert top_b.activation_ratio() == pytest.approx(0.25, abs=1e-3)
    assert not torch.equal(top_b.kept_per_neuron, top.kept_per_neuron)

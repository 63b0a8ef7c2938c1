"""CETT thresholds and token-averaged CETT against brute force on tiny random models."""

from __future__ import annotations

import pytest
import torch
from sparse_fixtures import greedy_batches, one_thread, tiny_model  # noqa: F401

from megasparse.sparsity.cett import (
    LayerCETT,
    candidate_thresholds,
    cett_of_threshold,
    layer_threshold_for_cett,
    neuron_thresholds,
    search_grid,
)
from megasparse.sparsity.passes import dense_pass, measurement_mode
from megasparse.sparsity.ppl_search import evaluate_cett


def brute_force_cett(h: torch.Tensor, w: torch.Tensor, tau: float) -> float:
    """Sum the neuron outputs n_i = h_i·W[:, i] with ‖n_i‖ ≤ τ token by token (no shortcuts)."""
    total = 0.0
    for t in range(h.shape[0]):
        y = torch.zeros(w.shape[0], dtype=torch.float64)
        tail = torch.zeros_like(y)
        for i in range(h.shape[1]):
            n_i = h[t, i].double() * w[:, i].double()
            y += n_i
            if n_i.norm() <= tau:
                tail += n_i
        total += float(tail.norm() / y.norm()) if y.norm() > 0 else 0.0
    return total / h.shape[0]


def layer_inputs(activation: str):
    model = tiny_model(activation)
    batch = greedy_batches(model, 1, b=2, s=16)[0]
    with measurement_mode(model) as mlps:
        d = dense_pass(model, mlps, batch)
    return model, mlps, [h.reshape(-1, h.shape[-1]) for h in d.hs]


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_token_averaged_cett_matches_brute_force(activation):
    _, mlps, hs = layer_inputs(activation)
    h, w = hs[1][:8, :40], mlps[1].down_proj.weight[:, :40].detach()
    layer = LayerCETT(h, w)
    for tau in (0.0, float(layer.norms.median()), float(layer.norms.max())):
        assert layer(tau) == pytest.approx(brute_force_cett(h, w, tau), rel=1e-4, abs=1e-6)
    assert layer(float(layer.norms.max())) == pytest.approx(1.0, rel=1e-5)  # everything dropped


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_searched_threshold_is_largest_grid_candidate_within_cett(activation):
    _, mlps, hs = layer_inputs(activation)
    for h, mlp in zip(hs, mlps):
        w = mlp.down_proj.weight
        layer = LayerCETT(h, w)
        grid = candidate_thresholds(layer.norms, 129)
        values = torch.tensor([layer(float(t)) for t in grid])  # brute force over the whole grid
        for c in (0.02, 0.1, 0.25, 0.5):
            within = torch.nonzero(values <= c).reshape(-1)
            expected = float(grid[within.max()]) if within.numel() else 0.0
            assert search_grid(layer, grid, c) == expected
            assert layer_threshold_for_cett(h, w, c, num_candidates=129) == expected


def test_candidate_grid_spans_min_to_subsampled_q99():
    norms = torch.rand(300, 500) * torch.rand(300, 1)  # 150k values: subsample stride 2
    grid = candidate_thresholds(norms, 65536)
    assert grid.numel() == 65536
    assert float(grid[0]) == float(norms.min())
    q99 = torch.quantile(norms.reshape(-1)[::2], 0.99)
    assert float(grid[-1]) == pytest.approx(float(q99), rel=1e-6)
    assert bool((grid[1:] >= grid[:-1]).all())


def test_cett_of_threshold_accepts_batched_h():
    _, mlps, hs = layer_inputs("relu")
    h = hs[0]
    w = mlps[0].down_proj.weight
    assert cett_of_threshold(h.reshape(2, -1, h.shape[-1]), w, 0.5) == pytest.approx(LayerCETT(h, w)(0.5))


def test_sparse_forward_keeps_exactly_norms_at_or_above_tau():
    model, mlps, hs = layer_inputs("silu")
    batch = greedy_batches(model, 1, b=2, s=16)[0]
    ev = evaluate_cett(model, [batch], 0.15)
    tau = ev.batch_thresholds[0]
    for layer, (h, mlp) in enumerate(zip(hs, mlps)):
        norms = h.abs() * mlp.down_proj.weight.norm(dim=0)
        expected = float((norms >= tau[layer]).double().mean())
        assert float(ev.stats.layer_activation_ratio()[layer]) == pytest.approx(expected)
        assert 0.0 < expected < 1.0


def test_neuron_thresholds_divide_by_column_norm_and_block_zero_columns():
    w = torch.randn(8, 5)
    w[:, 3] = 0
    out = neuron_thresholds(torch.tensor([2.0]), [w])
    assert torch.allclose(out[0, [0, 1, 2, 4]], 2.0 / w.norm(dim=0)[[0, 1, 2, 4]])
    assert out[0, 3] == float("inf")

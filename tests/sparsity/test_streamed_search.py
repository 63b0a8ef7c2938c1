"""The streamed CETT search (one layer's activations at a time, grids and probes kept between the
targets of a PPL bisection) gives exactly the answers of a search that keeps everything."""

from __future__ import annotations

import pytest
import torch
from sparse_fixtures import greedy_batches, one_thread, tiny_model  # noqa: F401

from megasparse.sparsity import cett as cett_module
from megasparse.sparsity import ppl_search
from megasparse.sparsity.cett import (
    LayerCETT,
    LayerThresholdSearch,
    exact_linear,
    layer_threshold_for_cett,
    neuron_output_norms,
    probes_keep_norms,
    thresholds_in_lockstep,
)
from megasparse.sparsity.live_calibration import DEFAULT_CACHE_BYTES, activation_cache_budget
from megasparse.sparsity.passes import dense_pass, measurement_mode
from megasparse.sparsity.ppl_search import search_cett_for_ppl

TARGETS = (0.02, 0.3, 0.1, 0.05, 0.2, 0.07)  # in bisection-like order, not sorted


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_released_and_reattached_search_answers_like_fresh_searches(activation):
    model = tiny_model(activation)
    batch = greedy_batches(model, 1, b=2, s=16)[0]
    with measurement_mode(model) as mlps:
        d = dense_pass(model, mlps, batch)
    for h, mlp in zip(d.hs, mlps):
        w = mlp.down_proj.weight
        search = LayerThresholdSearch(h, w, 257)
        search.release()
        answers = []
        for target in TARGETS:
            search.reattach(h.clone(), w)  # a recomputed dense pass: equal values, new tensors
            answers.append(search.threshold_for(target))
            search.release()
        assert answers == [layer_threshold_for_cett(h.reshape(-1, h.shape[-1]), w, t, 257) for t in TARGETS]
        assert len(set(answers)) > 2, "the targets should land on different candidates"


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_layers_searched_in_lockstep_answer_like_one_layer_at_a_time(activation, monkeypatch):
    model = tiny_model(activation)
    batch = greedy_batches(model, 1, b=2, s=16)[0]
    with measurement_mode(model) as mlps:
        d = dense_pass(model, mlps, batch)
    weights = [mlp.down_proj.weight for mlp in mlps]
    want = {
        target: [layer_threshold_for_cett(h.reshape(-1, h.shape[-1]), w, target, 1025) for h, w in zip(d.hs, weights)]
        for target in TARGETS
    }
    searches = [LayerThresholdSearch(h, w, 1025) for h, w in zip(d.hs, weights)]
    rounds: list[int] = []  # probes computed per call of probe_together
    together = cett_module.probe_together
    monkeypatch.setattr(cett_module, "probe_together", lambda probes: rounds.append(len(probes)) or together(probes))
    for target in TARGETS:  # remembered probes carry over between targets, as in a bisection
        assert thresholds_in_lockstep(searches, target) == want[target], target
    assert sum(rounds) == sum(len(search._cett_at) for search in searches)  # each probe computed once
    assert max(rounds) == len(searches), "a step should probe every layer that still searches"
    assert len(rounds) < sum(rounds), "the layers' probes should share their host syncs"


def test_kept_activations_searched_in_lockstep_give_the_streamed_search(tiny_model_relu_batches, monkeypatch):
    # On a GPU a kept batch's layers are searched in lockstep; here the probes keep norm matrices,
    # which would make one layer at a time the choice: force lockstep to compare it on the CPU.
    model, batches = tiny_model_relu_batches
    streamed = search_cett_for_ppl([model], [batches], 1.0, 1e-3, num_candidates=4096, dense_cache_bytes=0)
    monkeypatch.setattr(ppl_search, "probes_keep_norms", lambda h: False)
    lockstep = search_cett_for_ppl([model], [batches], 1.0, 1e-3, num_candidates=4096)
    assert 0.01 < lockstep.cett < 0.99
    assert lockstep.history == streamed.history
    assert lockstep.cett == streamed.cett and lockstep.ppl_ratio == streamed.ppl_ratio
    a, b = lockstep.evaluations[0], streamed.evaluations[0]
    assert torch.equal(a.batch_thresholds, b.batch_thresholds)
    assert torch.equal(a.stats.kept_per_layer, b.stats.kept_per_layer)


def test_released_search_refuses_new_probes():
    h = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)).relu()
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    search = LayerThresholdSearch(h, w, 65)
    first = search.threshold_for(0.1)
    search.release()
    assert search.threshold_for(0.1) == first  # remembered probes need no activations
    with pytest.raises(RuntimeError, match="reattach"):
        search.threshold_for(0.9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 probes with float32 results exist on CUDA only")
def test_bf16_probes_on_gpu_match_float32_probes():
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(4096, 1920, device="cuda", generator=gen).relu().to(torch.bfloat16)  # [T, f]
    w = (torch.randn(768, 1920, device="cuda", generator=gen) / 40).to(torch.bfloat16)  # [d, f]
    fast = exact_linear(h, w)
    ref = torch.nn.functional.linear(h.float(), w.float())
    assert fast.dtype == torch.float32
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    bf16_search, fp32_search = LayerThresholdSearch(h, w), LayerThresholdSearch(h.float(), w.float())
    for target in TARGETS:
        assert bf16_search.threshold_for(target) == fp32_search.threshold_for(target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused probe tail runs on CUDA")
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_fused_probe_tail_gives_the_tensor_paths_cett_values(activation):
    gen = torch.Generator(device="cuda").manual_seed(1)
    g = torch.randn(8192, 1920, device="cuda", generator=gen)
    h = (g.relu() if activation == "relu" else torch.nn.functional.silu(g)).to(torch.bfloat16)  # [T, f]
    w = (torch.randn(768, 1920, device="cuda", generator=gen) / 40).to(torch.bfloat16)  # [d, f]
    fused, tensors = LayerCETT(h, w), LayerCETT(h, w)
    assert fused._fused_tail
    tensors._fused_tail, tensors._norms = False, neuron_output_norms(h, tensors.column_norms)
    grid = LayerThresholdSearch(h, w).candidates
    for tau in grid[::4096].tolist() + [0.0]:
        assert fused(tau) == tensors(tau), tau


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the lockstep search with fused tails runs on CUDA")
def test_lockstep_search_with_fused_tails_answers_like_one_layer_at_a_time():
    gen = torch.Generator(device="cuda").manual_seed(2)
    hs = [torch.randn(8192, 1920, device="cuda", generator=gen).relu().to(torch.bfloat16) for _ in range(4)]  # [T, f]
    ws = [(torch.randn(768, 1920, device="cuda", generator=gen) / 40).to(torch.bfloat16) for _ in hs]  # [d, f]
    assert not probes_keep_norms(hs[0])
    searches = [LayerThresholdSearch(h, w) for h, w in zip(hs, ws)]
    for target in TARGETS:
        alone = [layer_threshold_for_cett(h, w, target) for h, w in zip(hs, ws)]
        assert thresholds_in_lockstep(searches, target) == alone, target


def test_streamed_and_kept_activations_give_the_same_search(tiny_model_relu_batches):
    model, batches = tiny_model_relu_batches
    kept = search_cett_for_ppl([model], [batches], 1.0, 1e-3, num_candidates=4096)
    streamed = search_cett_for_ppl([model], [batches], 1.0, 1e-3, num_candidates=4096, dense_cache_bytes=0)
    assert 0.01 < kept.cett < 0.99, f"search pinned at an end ({kept.cett}): the comparison would be weak"
    assert streamed.history == kept.history  # every trial's CETT and PPL ratio
    assert streamed.cett == kept.cett and streamed.ppl_ratio == kept.ppl_ratio
    a, b = streamed.evaluations[0], kept.evaluations[0]
    assert torch.equal(a.batch_thresholds, b.batch_thresholds)
    assert torch.equal(a.stats.kept_per_layer, b.stats.kept_per_layer)


@pytest.fixture
def tiny_model_relu_batches():
    model = tiny_model("relu")
    return model, greedy_batches(model, 2, b=2, s=16)


def test_cache_budget_off_a_gpu_is_the_fixed_default():
    assert activation_cache_budget(torch.device("cpu")) == DEFAULT_CACHE_BYTES


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the caching allocator's memory is a GPU's")
def test_cache_budget_on_a_gpu_is_half_the_reserved_memory_left_unused():
    device = torch.device("cuda")
    freed = torch.empty(8 << 30, dtype=torch.uint8, device=device)  # a training step's activations
    del freed  # back to the caching allocator, still reserved
    unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    assert unused >= 8 << 30
    assert activation_cache_budget(device) == max(DEFAULT_CACHE_BYTES, unused // 2)

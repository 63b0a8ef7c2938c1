"""Activation counters: against a brute-force count, under activation checkpointing, reductions."""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megasparse.config import ModelConfig
from megasparse.model.transformer import Transformer
from megasparse.sparsity.counters import ActivationCounters, attach_counters, down_projection_column_norms
from megasparse.sparsity.reduction import CounterGroups, reduce_counters


def tiny_model(activation: str, checkpointing: bool = False) -> Transformer:
    cfg = ModelConfig(hidden_size=32, num_layers=3, head_dim=8, ffn_size=80, vocab_size=97, activation=activation)
    return Transformer(cfg, seed=3, activation_checkpointing=checkpointing)


def brute_force_counts(model: Transformer, tokens: torch.Tensor, tau: torch.Tensor | None):
    """Counts from the raw g and h captured by hooks, computed the obvious way."""
    gates, hs = {}, {}
    hooks = []
    for mlp in model.mlps():
        i = mlp.layer_index
        hooks.append(mlp.gate_proj.register_forward_hook(lambda m, a, out, i=i: gates.__setitem__(i, out.detach())))
        hooks.append(mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: hs.__setitem__(i, a[0].detach())))
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    active, above = [], []
    for mlp in model.mlps():
        i = mlp.layer_index
        g = gates[i].reshape(-1, gates[i].shape[-1])
        h = hs[i].reshape(-1, hs[i].shape[-1])
        active.append((g > 0).sum(0))
        if tau is not None:
            norms = mlp.down_proj.weight.norm(dim=0)  # ‖W_down[:, i]‖₂
            above.append((h.abs() * norms >= tau[i]).sum(0))
    return torch.stack(active), (torch.stack(above) if tau is not None else None)


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_counts_equal_brute_force(activation):
    torch.manual_seed(0)
    model = tiny_model(activation)
    tokens = torch.randint(0, 97, (3, 17))
    counters = ActivationCounters(range(3), 80)
    # τ in the middle of each layer's |h|·‖w‖ range, so both outcomes occur.
    tau = torch.tensor([0.02, 0.03, 0.025])
    counters.set_layer_thresholds(tau)
    counters.refresh_neuron_thresholds(down_projection_column_norms(model))
    attach_counters(model, counters)
    with torch.no_grad():
        model(tokens)
    attach_counters(model, None)
    active, above = brute_force_counts(model, tokens, tau)
    assert torch.equal(counters.active, active)
    assert torch.equal(counters.above_threshold, above)
    assert counters.tokens.tolist() == [51, 51, 51]
    assert 0 < int(above.sum()) < above.numel() * 51, "the threshold should split the neurons"
    if activation == "relu":
        assert 0 < int(active.sum()) < active.numel() * 51


def test_counts_identical_with_activation_checkpointing():
    torch.manual_seed(1)
    tokens = torch.randint(0, 97, (2, 13))
    results = []
    for ckpt in (False, True):
        model = tiny_model("relu", checkpointing=ckpt)
        counters = ActivationCounters(range(3), 80)
        attach_counters(model, counters)
        loss = model(tokens).float().logsumexp(-1).mean()
        loss.backward()  # recomputes every block when checkpointing
        results.append((counters.active.clone(), counters.tokens.clone(), [p.grad.clone() for p in model.parameters()]))
    (a0, t0, g0), (a1, t1, g1) = results
    assert torch.equal(a0, a1)
    assert torch.equal(t0, t1) and t0.tolist() == [26, 26, 26]
    for x, y in zip(g0, g1):
        torch.testing.assert_close(x, y)


def test_counters_off_when_detached_and_disabled():
    model = tiny_model("relu")
    counters = ActivationCounters(range(3), 80)
    attach_counters(model, counters)
    counters.enabled = False
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 5)))
    assert int(counters.tokens.sum()) == 0 and int(counters.active.sum()) == 0


def test_state_dict_round_trip():
    c = ActivationCounters([0, 1], 4)
    c.active += torch.arange(8).reshape(2, 4)
    c.tokens += torch.tensor([5, 6])
    d = ActivationCounters([0, 1], 4)
    d.load_state_dict(c.state_dict())
    assert torch.equal(d.active, c.active) and torch.equal(d.tokens, c.tokens)
    with pytest.raises(ValueError, match="does not match"):
        ActivationCounters([2, 3], 4).load_state_dict(c.state_dict())


# ---------------------------------------------------------------------------- reductions on gloo
def _rank_counters(rank: int, layers: list[int], f: int, tokens: int) -> ActivationCounters:
    c = ActivationCounters(layers, f)
    g = torch.Generator().manual_seed(100 + rank)
    c.active += torch.randint(0, tokens + 1, c.active.shape, generator=g)
    c.tokens += tokens
    return c


def _worker(rank: int, world: int, init_file: str, mode: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if mode == "dp":  # same layers and neurons, different tokens per rank
        c = _rank_counters(rank, [0, 1], 6, tokens=10 + rank)
        groups = CounterGroups(data=dist.group.WORLD)
    elif mode == "tp":  # same layers and tokens, different neuron slices
        c = _rank_counters(rank, [0, 1], 3, tokens=10)
        groups = CounterGroups(tensor=dist.group.WORLD)
    else:  # pp: different layers per stage
        c = _rank_counters(rank, [2 * rank, 2 * rank + 1], 6, tokens=10)
        groups = CounterGroups(pipeline=dist.group.WORLD)
    local = [x.active.clone() for x in [c]][0]
    gathered = [None] * world
    dist.all_gather_object(gathered, local)
    snap = reduce_counters(c, groups)
    if rank == 0:
        torch.save({"snap": snap.__dict__, "locals": gathered}, out_file)
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["dp", "tp", "pp"])
def test_reduction_over_two_ranks(mode, tmp_path):
    init_file = tempfile.mktemp(dir=tmp_path)
    out_file = str(tmp_path / "out.pt")
    mp.start_processes(_worker, args=(2, init_file, mode, out_file), nprocs=2, start_method="spawn")
    res = torch.load(out_file, weights_only=False)
    snap, locals_ = res["snap"], res["locals"]
    if mode == "dp":
        assert torch.equal(snap["active"], locals_[0] + locals_[1])
        assert snap["tokens"].tolist() == [21, 21]  # 10 + 11: summed over DP
    elif mode == "tp":
        assert torch.equal(snap["active"], torch.cat(locals_, dim=1))
        assert snap["active"].shape == (2, 6)
        assert snap["tokens"].tolist() == [10, 10]  # same tokens on both slices: not doubled
    else:
        assert snap["layer_ids"] == [0, 1, 2, 3]
        assert torch.equal(snap["active"], torch.cat(locals_, dim=0))
        assert snap["tokens"].tolist() == [10, 10, 10, 10]

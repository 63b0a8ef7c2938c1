"""CETT calibration under TP=2 and DP=2 against one process, run inside 2 gloo processes.

Every rank builds the unsharded reference model from the same seed and evaluates it with
one-rank groups (no collective reaches another process: exactly the single-process code path),
then the same computation split over the two ranks. ``worker`` writes, per check, None or the
failure text, plus the measured differences (reported by the test).

``MEGASPARSE_CETT_CHECK_DEVICE=cuda`` runs the same checks over NCCL, one GPU per rank (the
collectives then must work on GPU tensors); the default is CPU and gloo.
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from tp_checks import SEED, TINY  # the same tiny model as the TP layer checks

from megasparse.config import config_from_dict
from megasparse.model.transformer import Transformer
from megasparse.parallel import ParallelGroups, tensor_parallel_layer_factory
from megasparse.sparsity.cett import (
    LayerCETT,
    LayerThresholdSearch,
    candidate_thresholds,
    cett_of_threshold,
    down_column_norms,
    layer_threshold_for_cett,
    thresholds_in_lockstep,
)
from megasparse.sparsity.live_calibration import LiveCalibrator
from megasparse.sparsity.passes import SparseStats, dense_pass, measurement_mode, sparse_pass
from megasparse.sparsity.ppl_search import evaluate_cett, search_cett_for_ppl

DEVICE = os.environ.get("MEGASPARSE_CETT_CHECK_DEVICE", "cpu")  # "cpu" (gloo) or "cuda" (NCCL)
CETT_VALUES = (0.05, 0.15, 0.3)
TOLERANCE = 1e-3  # CETT search bracket


def model_config(**overrides):
    return config_from_dict({"model": {**TINY, **overrides}}).model


@torch.no_grad()
def greedy_batches(model: Transformer, n: int, b: int, s: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """[b, s+1] batches the dense model continues greedily: sparsifying can only raise the PPL."""
    g = torch.Generator().manual_seed(seed)
    out = []
    device = next(model.parameters()).device
    for _ in range(n):
        toks = torch.randint(0, TINY["vocab_size"], (b, 4), generator=g).to(device)
        while toks.shape[1] < s + 1:
            toks = torch.cat([toks, model(toks)[:, -1].argmax(-1, keepdim=True)], dim=1)
        out.append(toks)
    return out


class Setup:
    """The two layouts of the 2-process world and a one-rank group for the reference."""

    def __init__(self):
        self.tp2 = ParallelGroups.build(tensor=2)  # TP group of 2, DP group of 1
        self.dp2 = ParallelGroups.build(tensor=1)  # DP group of 2, TP group of 1
        self.alone = self.tp2.dp_group  # one rank: every reduction is skipped
        self.rank = dist.get_rank()
        self.device = torch.device(f"cuda:{self.rank}" if DEVICE == "cuda" else "cpu")


def _grid_step(h: torch.Tensor, w: torch.Tensor, group) -> float:
    grid = candidate_thresholds(LayerCETT(h, w, group).norms, group=group)
    return float(grid[1] - grid[0])


def _reference_counts(model, batches, taus: torch.Tensor) -> SparseStats:
    """One-process sparse passes with GIVEN τ per (batch, layer): what the split run must count."""
    total = None
    with measurement_mode(model) as mlps:
        for i, tokens in enumerate(batches):
            bounds = [float(taus[i, layer]) / down_column_norms(m.down_proj.weight) for layer, m in enumerate(mlps)]
            keep = lambda pos, h, _s: h.float().abs() >= bounds[pos]
            _, stats = sparse_pass(model, mlps, tokens, keep, per_neuron=True)
            if total is None:
                total = stats
            else:
                total.merge(stats)
    return total


def _compare_evaluations(ref_model, ref_batches, ev_ref, ev, alone, what: str) -> dict:
    """Asserts the agreements promised in the module docstring of ppl_search; returns the gaps."""
    gaps = {}
    step_bound = []
    for tokens in ref_batches:
        with measurement_mode(ref_model) as mlps:
            hs = dense_pass(ref_model, mlps, tokens).hs
        for h, m in zip(hs, mlps):
            step_bound.append(_grid_step(h.reshape(-1, h.shape[-1]), m.down_proj.weight, alone))
    steps = torch.tensor(step_bound, dtype=torch.float64).reshape(ev_ref.batch_thresholds.shape)
    tau_gap = (ev.batch_thresholds.double() - ev_ref.batch_thresholds.double()).abs()
    gaps["tau_max_abs_gap_in_grid_steps"] = float((tau_gap / steps).max())
    gaps["tau_exact_fraction"] = float((tau_gap == 0).double().mean())
    # The grid is layout-invariant, but h (hence the norms and q99) round differently when the
    # matmuls are split (~1e-7 relative), which moves every candidate by as much. A neuron norm
    # inside that sliver flips one binary-search step: τ agree to the same candidate or the next.
    assert bool((tau_gap <= steps * (1 + 1e-3)).all()), (
        f"{what}: τ differ: {ev.batch_thresholds} vs {ev_ref.batch_thresholds}"
    )
    gaps["ppl_ratio_rel_gap"] = abs(ev.ppl_ratio / ev_ref.ppl_ratio - 1)
    assert gaps["ppl_ratio_rel_gap"] <= 1e-5, f"{what}: PPL ratio {ev.ppl_ratio} vs {ev_ref.ppl_ratio}"
    assert abs(ev.dense_loss - ev_ref.dense_loss) <= 1e-5 * abs(ev_ref.dense_loss), f"{what}: dense loss"
    assert ev.stats.tokens == ev_ref.stats.tokens, f"{what}: tokens {ev.stats.tokens} vs {ev_ref.stats.tokens}"
    assert ev.stats.ffn_size == ev_ref.stats.ffn_size == TINY["ffn_size"], f"{what}: ffn size"
    # The masks and the reduction of the counts: one process with the split run's τ counts the
    # same (h differs by float rounding only, so an entry at the threshold could flip).
    recount = _reference_counts(ref_model, ref_batches, ev.batch_thresholds)
    kept, expected = ev.stats.kept_per_layer.tolist(), recount.kept_per_layer.tolist()
    gaps["kept_vs_one_process_at_same_tau"] = max(abs(a - b) for a, b in zip(kept, expected))
    assert gaps["kept_vs_one_process_at_same_tau"] <= 2, f"{what}: kept {kept} vs one process {expected}"
    if ev.stats.kept_per_neuron is not None:
        neuron_gap = int((ev.stats.kept_per_neuron - recount.kept_per_neuron).abs().sum())
        assert neuron_gap <= 2 * len(kept), f"{what}: per-neuron counts differ in {neuron_gap} entries"
    gaps["kept_entries_gap"] = max(abs(a - b) for a, b in zip(kept, ev_ref.stats.kept_per_layer.tolist()))
    gaps["activation_ratio_gap"] = abs(ev.activation_ratio - ev_ref.activation_ratio)
    if gaps["tau_exact_fraction"] == 1.0:
        assert gaps["kept_entries_gap"] <= 2, f"{what}: same τ, different counts"
    return gaps


def _check_tp(s: Setup, activation: str, sequence_parallel: bool) -> dict:
    g = s.tp2
    cfg = model_config(activation=activation)
    ref = Transformer(cfg, seed=SEED, device=s.device).eval()
    tp_model = Transformer(
        cfg, seed=SEED, device=s.device, layer_factory=tensor_parallel_layer_factory(g, sequence_parallel)
    ).eval()
    batches = greedy_batches(ref, 2, b=2)
    out = {}
    for c in CETT_VALUES:
        per = dict(per_neuron=True, per_token=True)
        ev_ref = evaluate_cett(ref, batches, c, group=s.alone, **per)
        ev = evaluate_cett(tp_model, batches, c, group=g.dp_group, tp_group=g.tp_group, **per)
        what = f"{activation} sp={sequence_parallel} c={c}"
        gaps = _compare_evaluations(ref, batches, ev_ref, ev, s.alone, what)
        assert ev.stats.kept_per_neuron.shape == ev_ref.stats.kept_per_neuron.shape == (2, TINY["ffn_size"])
        token_gap = max(float((a - b).abs().max()) for a, b in zip(ev.stats.token_ratio, ev_ref.stats.token_ratio))
        if gaps["tau_exact_fraction"] == 1.0:
            assert token_gap <= 2 / TINY["ffn_size"] + 1e-6, f"{what}: per-token ratios differ by {token_gap}"
        # CETT of the reference τ, on this rank's neuron slice of the reference h.
        f_local = TINY["ffn_size"] // 2
        cols = slice(g.tp_rank * f_local, (g.tp_rank + 1) * f_local)
        cett_gap = 0.0
        with measurement_mode(ref) as ref_mlps, measurement_mode(tp_model) as tp_mlps:
            hs_ref = dense_pass(ref, ref_mlps, batches[0]).hs
            hs_tp = dense_pass(tp_model, tp_mlps, batches[0], tp_group=g.tp_group).hs
            for layer, (m_ref, m_tp) in enumerate(zip(ref_mlps, tp_mlps)):
                # fp32 rounding of the split matmuls: absolute, relative to the layer's largest h.
                h_gap = float((hs_tp[layer] - hs_ref[layer][..., cols]).abs().max() / hs_ref[layer].abs().max())
                gaps["h_gap_relative_to_max"] = max(gaps.get("h_gap_relative_to_max", 0.0), h_gap)
                assert h_gap <= 1e-5, f"{what}: layer {layer} h differs by {h_gap} of its max"
                tau = float(ev_ref.batch_thresholds[0, layer])
                want = cett_of_threshold(hs_ref[layer], m_ref.down_proj.weight, tau, group=s.alone)
                got = cett_of_threshold(hs_tp[layer], m_tp.down_proj.weight, tau, group=g.dp_group, tp_group=g.tp_group)
                cett_gap = max(cett_gap, abs(got - want))
                assert 0 < want <= c + 1e-9
        assert cett_gap <= 1e-5, f"{what}: CETT(τ) differs by {cett_gap}"
        gaps["cett_of_tau_gap"] = cett_gap
        out[f"c={c}"] = gaps
    # The full PPL-1% search: offline on the reference (activations kept between trials), live on
    # the TP model (streamed layer by layer: probes run their TP collectives inside the forward).
    found_ref = search_cett_for_ppl([ref], [batches], 1.0, TOLERANCE, group=s.alone)
    tp_model.train()
    live = LiveCalibrator.for_groups(batches, g, p=1.0, tolerance=TOLERANCE, dense_cache_bytes=0).calibrate(tp_model)
    assert tp_model.training
    assert abs(live.cett - found_ref.cett) <= TOLERANCE, f"search: {live.cett} vs {found_ref.cett}"
    assert abs(live.ppl_ratio / found_ref.ppl_ratio - 1) <= 1e-5 or live.cett != found_ref.cett
    out["search"] = {
        "cett_tp": live.cett,
        "cett_ref": found_ref.cett,
        "ppl_ratio_tp": live.ppl_ratio,
        "ppl_ratio_ref": found_ref.ppl_ratio,
        "activation_tp": live.activation_ratio,
        "activation_ref": found_ref.evaluations[0].activation_ratio,
    }
    return out


def check_tp2_relu(s: Setup) -> dict:
    return _check_tp(s, "relu", sequence_parallel=False)


def check_tp2_silu_sequence_parallel(s: Setup) -> dict:
    return _check_tp(s, "silu", sequence_parallel=True)


def check_dp2(s: Setup) -> dict:
    """DP=2, each rank half of every global batch, against one process on the whole batches."""
    g = s.dp2
    ref = Transformer(model_config(), seed=SEED, device=s.device).eval()
    global_batches = greedy_batches(ref, 2, b=4, seed=1)  # [4, 33]: rows 2r, 2r+1 go to DP rank r
    mine = [b[2 * g.dp_rank : 2 * g.dp_rank + 2] for b in global_batches]
    out = {}
    for c in CETT_VALUES[:2]:
        ev_ref = evaluate_cett(ref, global_batches, c, group=s.alone, per_neuron=True)
        ev = evaluate_cett(ref, mine, c, group=g.dp_group, per_neuron=True)
        gaps = _compare_evaluations(ref, global_batches, ev_ref, ev, s.alone, f"dp2 c={c}")
        assert ev.stats.kept_per_neuron.shape == (2, TINY["ffn_size"])
        out[f"c={c}"] = gaps
    found_ref = search_cett_for_ppl([ref], [global_batches], 1.0, TOLERANCE, group=s.alone)
    found = LiveCalibrator.for_groups(mine, g, p=1.0, tolerance=TOLERANCE).calibrate(ref)
    assert abs(found.cett - found_ref.cett) <= TOLERANCE, f"dp2 search: {found.cett} vs {found_ref.cett}"
    out["search"] = {"cett_dp": found.cett, "cett_ref": found_ref.cett}
    return out


def check_grid_is_layout_invariant(s: Setup) -> dict:
    """Random norms split over TP (neurons) and DP (tokens): the grid of the whole matrix, bit for bit."""
    torch.manual_seed(3)
    full = (torch.rand(700, 200) * torch.rand(700, 1)).to(s.device)  # 140k values: subsample stride 2
    expected = candidate_thresholds(full, 1025, group=s.alone)
    r = s.rank
    by_tp = candidate_thresholds(full[:, 100 * r : 100 * (r + 1)], 1025, group=s.tp2.dp_group, tp_group=s.tp2.tp_group)
    rows = slice(0, 300) if r == 0 else slice(300, 700)  # unequal token counts per DP rank
    by_dp = candidate_thresholds(full[rows], 1025, group=s.dp2.dp_group)
    assert torch.equal(by_tp, expected), "TP grid differs"
    assert torch.equal(by_dp, expected), "DP grid differs"
    return {}


def check_tp_needs_the_data_group(s: Setup) -> dict:
    h, w = torch.rand(4, 80, device=s.device), torch.randn(8, 80, device=s.device)
    try:
        LayerCETT(h, w, group=None, tp_group=s.tp2.tp_group)
    except ValueError as e:
        assert "data-parallel group" in str(e)
    else:
        raise AssertionError("group=None under TP must be refused (it would mean the whole world)")
    return {}


def check_lockstep_searches(s: Setup) -> dict:
    """Every layer searched in lockstep (one stacked DP all-reduce per step; under TP each probe's
    partial products summed as alone) gives each layer's answer searched alone, under TP2 and DP2."""
    out = {}
    for name, g, factory in (
        ("tp2", s.tp2, tensor_parallel_layer_factory(s.tp2, False)),
        ("dp2", s.dp2, None),
    ):
        extra = {} if factory is None else {"layer_factory": factory}
        model = Transformer(model_config(), seed=SEED, device=s.device, **extra).eval()
        batch = greedy_batches(model, 1, b=2, seed=2 + g.dp_rank)[0]  # DP ranks: different tokens
        tp_group = g.tp_group if name == "tp2" else None
        with measurement_mode(model) as mlps:
            hs = dense_pass(model, mlps, batch, tp_group=tp_group).hs
        weights = [m.down_proj.weight for m in mlps]
        searches = [LayerThresholdSearch(h, w, 1025, g.dp_group, tp_group) for h, w in zip(hs, weights)]
        for c in CETT_VALUES:
            alone = [layer_threshold_for_cett(h, w, c, 1025, g.dp_group, tp_group) for h, w in zip(hs, weights)]
            together = thresholds_in_lockstep(searches, c)
            assert together == alone, f"{name} c={c}: lockstep {together} vs alone {alone}"
        out[name] = {"probes": sum(len(search._cett_at) for search in searches)}
    return out


CHECKS = [
    ("grid_layout_invariant", check_grid_is_layout_invariant),
    ("tp_needs_data_group", check_tp_needs_the_data_group),
    ("tp2_relu", check_tp2_relu),
    ("tp2_silu_sequence_parallel", check_tp2_silu_sequence_parallel),
    ("dp2", check_dp2),
    ("lockstep_searches", check_lockstep_searches),
]


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    if DEVICE == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if DEVICE == "cuda" else "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    results, numbers = {}, {}
    try:
        setup = Setup()
        for name, check in CHECKS:
            try:
                numbers[name] = check(setup)
                results[name] = None
            except Exception:  # noqa: BLE001 — reported to the parent test, which fails on it
                results[name] = traceback.format_exc(limit=6)
            dist.barrier()  # keep the ranks in step even after a failure
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump({"results": results, "numbers": numbers}, fh)
        dist.destroy_process_group()

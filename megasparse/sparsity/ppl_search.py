"""CETT-PPL-p%: the CETT value at which validation perplexity rises by p% (docs/sparsing-law.md §1.3, Alg. 1).

Evaluating one CETT value c on one model, per validation batch (as the authors' bmt scripts):
dense pass (loss, h of every layer) → τ_l for c from that batch's h → sparse pass that zeroes
``|h_i|·‖W_down[:, i]‖ < τ_l`` → ratio ``exp(loss_sparse − loss_dense)``. The model's PPL ratio is
the MEAN OF THE PER-BATCH RATIOS; over several checkpoints, the mean of the models' ratios.

The outer search bisects c ∈ [0, 1] until ``r − l ≤ tolerance``: mean ratio below ``1 + p/100``
→ ``l = mid`` else ``r = mid``; the answer is ``(l + r)/2``, then evaluated once more so that
the reported τ, ratios and activation ratio belong to the returned value.

Distributed: pass the data-parallel ``group`` and, under tensor parallelism, ``tp_group``
(cett.py's conventions). Batch i of the evaluation is the GLOBAL batch made of every DP rank's
i-th micro-batch (every rank must give the same number of batches; the TP ranks of one DP rank
give the same batches): its τ come from all its tokens (cett.py), its dense and sparse losses
are token means over all DP ranks, and its ratio is ``exp(sparse − dense)`` of those. So the
result depends only on the global batches, not on the DP or TP sizes (up to float rounding).
Under TP the losses are the vocab-parallel cross-entropy; kept counts are summed over the
neurons of the TP ranks and the tokens of the DP ranks, tokens counted once per TP group;
per-neuron counts are gathered over TP into the full [L, f].
Under pipeline parallelism each model is this rank's stage: thresholds and statistics cover
the stage's layers ([L_stage]), losses and ratios are the whole model's (passes.py), and
``stages`` keeps the stages' decisions in step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from megasparse.parallel.collectives import group_size
from megasparse.sparsity.cett import (
    NUM_CANDIDATES,
    Group,
    LayerThresholdSearch,
    _all_reduce,
    _distributed,
    _tp_all_reduce,
    check_groups,
    down_column_norms,
    probes_keep_norms,
    thresholds_in_lockstep,
)
from megasparse.sparsity.full_weights import full_copies
from megasparse.sparsity.passes import SparseStats, measurement_mode, sparse_pass, streamed_dense_pass
from megasparse.sparsity.pipeline_forward import StageAgreement


@dataclass
class CETTEvaluation:
    """One CETT value on one model and its batch set."""

    cett: float
    dense_loss: float  # mean over batches
    sparse_loss: float  # mean over batches
    ppl_ratio: float  # mean over batches of exp(sparse − dense)
    batch_thresholds: torch.Tensor  # float32 [n_batches, L], τ found on each batch
    stats: SparseStats

    @property
    def layer_thresholds(self) -> torch.Tensor:
        """τ per layer averaged over batches (float32 [L]): for the sidecar, live counting, eval."""
        return self.batch_thresholds.mean(dim=0)

    @property
    def activation_ratio(self) -> float:
        return self.stats.activation_ratio()


def _global_batch_losses(dense: float, sparse: float, tokens: int, device, group: Group) -> tuple[float, float]:
    """(dense, sparse) token-mean losses of the global batch: this rank's, weighted over DP ranks."""
    if not _distributed(group):
        return dense, sparse
    packed = torch.tensor([dense * tokens, sparse * tokens, float(tokens)], dtype=torch.float64, device=device)
    _all_reduce(packed, dist.ReduceOp.SUM, group)
    return float(packed[0] / packed[2]), float(packed[1] / packed[2])


class SearchCache:
    """What one model's PPL bisection keeps between its trials.

    Always, and small: W_down of every layer (whole copies under ZeRO-3, gathered once) with its
    column norms, and per (batch, layer) the :class:`LayerThresholdSearch`: its candidate grid,
    the per-token dense norms and every CETT(τ) probed so far.

    The layers' ``h`` (the dense pass's ``[b, s, f]`` activations) only while a batch's fit in
    ``budget_bytes``: then later trials skip that batch's dense forward. Otherwise a trial
    recomputes the dense pass and hands each layer's ``h`` to its search while the forward is at
    that layer (``streamed_dense_pass``), so one layer's activations exist at a time: a 0.1B model
    at 64k tokens per batch has 4 GB of them in bf16, which a GPU in training has no room for.
    Whether a batch is kept depends on tensor sizes only (agreed by the pipeline stages, whose
    layers differ), so ranks never diverge in what they recompute (probes run collectives).
    """

    def __init__(self, budget_bytes: int = 1 << 30, stages: Optional[StageAgreement] = None) -> None:
        self.weights: Optional[list[torch.Tensor]] = None  # [d, f/tp] per layer
        self.column_norms: Optional[list[torch.Tensor]] = None  # float32 [f/tp] per layer
        self.searches: dict[tuple[int, int], LayerThresholdSearch] = {}  # (batch, layer) → search
        self.kept: dict[int, tuple[list[torch.Tensor], float]] = {}  # batch → (h per layer, dense loss)
        self.seen: set[int] = set()  # batches whose keeping was decided (once, at the first trial)
        self.dense_loss: dict[int, float] = {}  # batch → dense loss (it does not depend on c)
        self.budget = int(budget_bytes)
        self.stages = stages

    def load_weights(self, mlps: list[nn.Module]) -> None:
        if self.weights is None:
            self.weights = full_copies([m.down_proj.weight for m in mlps])
            self.column_norms = [down_column_norms(w) for w in self.weights]

    def may_keep(self, tokens: torch.Tensor, mlps: list[nn.Module]) -> bool:
        """Whether one batch's ``h`` of every layer fits what is left of the budget (and takes it)."""
        f_local = self.weights[0].shape[1]
        dtype = next(mlps[0].parameters()).dtype
        need = tokens[:, :-1].numel() * f_local * dtype.itemsize * len(mlps)
        fits = need <= self.budget
        if self.stages is not None:
            fits = self.stages.all(fits)
        if fits:
            self.budget -= need
        return fits


def _layer_thresholds(
    model: nn.Module,
    mlps: list[nn.Module],
    tokens: torch.Tensor,
    batch_index: int,
    cett: float,
    cache: SearchCache,
    num_candidates: int,
    group: Group,
    tp_group: Group,
) -> tuple[torch.Tensor, float]:
    """τ per layer (float32 [L]) for ``cett`` on one batch, and the batch's dense loss."""
    taus = [0.0] * len(mlps)

    def search_of(pos: int, h: torch.Tensor) -> LayerThresholdSearch:  # h [b, s, f/tp]
        key, weight = (batch_index, pos), cache.weights[pos]
        search = cache.searches.get(key)
        if search is None:
            search = cache.searches[key] = LayerThresholdSearch(h, weight, num_candidates, group, tp_group)
        else:
            search.reattach(h, weight)
        return search

    def search_layer(pos: int, h: torch.Tensor) -> None:  # during a streamed forward
        search = search_of(pos, h)
        taus[pos] = search.threshold_for(cett)
        search.release()

    def search_kept(hs: list[torch.Tensor]) -> None:
        """Every layer of a batch whose activations are all kept: on a GPU the layers' searches
        advance in lockstep (one host sync per step of all layers, not one per probe); where a
        probe state holds a float32 norm matrix, one layer at a time as in a streamed pass."""
        if probes_keep_norms(hs[0]):
            for pos, h in enumerate(hs):
                search_layer(pos, h)
            return
        searches = [search_of(pos, h) for pos, h in enumerate(hs)]
        taus[:] = thresholds_in_lockstep(searches, cett)
        for search in searches:
            search.release()

    if batch_index in cache.kept:
        hs, dense_loss = cache.kept[batch_index]
        search_kept(hs)
    elif batch_index not in cache.seen and cache.may_keep(tokens, mlps):
        hs: list = [None] * len(mlps)
        dense_loss = streamed_dense_pass(model, mlps, tokens, hs.__setitem__, tp_group)
        search_kept(hs)
        cache.kept[batch_index] = (hs, dense_loss)
    else:
        known = cache.dense_loss.get(batch_index)
        dense_loss = streamed_dense_pass(model, mlps, tokens, search_layer, tp_group, need_loss=known is None)
        dense_loss = known if known is not None else dense_loss
        cache.dense_loss[batch_index] = dense_loss
    cache.seen.add(batch_index)
    return torch.tensor(taus, dtype=torch.float32), dense_loss


@torch.no_grad()
def evaluate_cett(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    cett: float,
    *,
    per_neuron: bool = False,
    per_token: bool = False,
    num_candidates: int = NUM_CANDIDATES,
    group: Group = None,
    tp_group: Group = None,
    cache: Optional[SearchCache] = None,
) -> CETTEvaluation:
    """Per batch: dense → τ_l(c) → sparse. Batches are [b, s+1] token tensors on any device.

    ``cache`` carries the per-layer grids and probed CETT values across the calls of one search
    (the answers do not depend on it, only the time they take).
    """
    check_groups(group, tp_group)
    device = next(model.parameters()).device
    cache = cache if cache is not None else SearchCache()
    dense, sparse, ratios, taus = [], [], [], []
    total: Optional[SparseStats] = None
    with measurement_mode(model) as mlps:
        cache.load_weights(mlps)
        for index, tokens in enumerate(batches):
            tokens = tokens.to(device)
            tau, dense_loss = _layer_thresholds(
                model, mlps, tokens, index, cett, cache, num_candidates, group, tp_group
            )  # [L]
            bounds = [
                tau[i].item() / torch.where(n > 0, n, torch.full_like(n, float("nan")))
                for i, n in enumerate(cache.column_norms)
            ]
            # norm ≥ τ  ⇔  |h| ≥ τ/‖W[:, i]‖; a zero column (nan bound) is never kept, since no
            # comparison with NaN holds. |h| of a bf16 h compares with the float32 bound in float32
            # (type promotion inside the kernel, exact), without a float32 copy of h.
            keep = lambda pos, h, _s: h.abs() >= bounds[pos]
            loss_s, stats = sparse_pass(
                model, mlps, tokens, keep, per_neuron=per_neuron, per_token=per_token, tp_group=tp_group
            )
            loss_d, loss_s = _global_batch_losses(dense_loss, loss_s, stats.tokens, device, group)
            dense.append(loss_d)
            sparse.append(loss_s)
            ratios.append(math.exp(loss_s - loss_d))
            taus.append(tau)
            if total is None:
                total = stats
            else:
                total.merge(stats)
    _reduce_stats(total, device, group, tp_group)
    n = len(batches)
    return CETTEvaluation(
        cett=float(cett),
        dense_loss=sum(dense) / n,
        sparse_loss=sum(sparse) / n,
        ppl_ratio=sum(ratios) / n,
        batch_thresholds=torch.stack(taus),
        stats=total,
    )


def _reduce_stats(stats: SparseStats, device, group: Group, tp_group: Group) -> None:
    """Whole-model statistics from this rank's (docs/design.md §4): kept counts summed over TP neurons and
    DP tokens; tokens summed over DP only; per-neuron counts gathered over TP, summed over DP;
    per-token ratios (local rows, kept local) averaged over the TP ranks' equal neuron slices.
    Collectives run on ``device`` (NCCL cannot reduce CPU tensors); results come back to the CPU.
    """
    tp, dp = group_size(tp_group), _distributed(group)
    if tp == 1 and not dp:
        return

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        t = _tp_all_reduce(t.to(device, copy=True), dist.ReduceOp.SUM, tp_group)
        return _all_reduce(t, dist.ReduceOp.SUM, group).cpu()

    stats.kept_per_layer = reduce_sum(stats.kept_per_layer)
    if stats.kept_per_neuron is not None:
        local = stats.kept_per_neuron.to(device).contiguous()  # [L, f/tp]
        if tp > 1:
            parts = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(parts, local, group=tp_group)
            local = torch.cat(parts, dim=1)  # [L, f], neurons in TP rank order
        stats.kept_per_neuron = _all_reduce(local, dist.ReduceOp.SUM, group).cpu()
    if tp > 1:
        stats.token_ratio = [
            (_tp_all_reduce(r.to(device, copy=True), dist.ReduceOp.SUM, tp_group) / tp).cpu() for r in stats.token_ratio
        ]
    stats.ffn_size *= tp
    tokens = torch.tensor([stats.tokens], dtype=torch.int64, device=device)
    stats.tokens = int(_all_reduce(tokens, dist.ReduceOp.SUM, group))


@dataclass
class PPLSearchResult:
    """The CETT value for a target PPL ratio over one or several models."""

    cett: float
    target_ratio: float
    ppl_ratio: float  # mean over models at `cett`
    low: float  # final bracket: mean ratio(low) < target ≤ mean ratio(high) (unless clipped at 0/1)
    high: float
    iterations: int
    evaluations: list[CETTEvaluation] = field(default_factory=list)  # per model, at `cett`
    history: list[tuple[float, float]] = field(default_factory=list)  # (c, mean ratio) tried


def search_cett_for_ppl(
    models: Sequence[nn.Module],
    batch_sets: Sequence[Sequence[torch.Tensor]],
    p: float = 1.0,
    tolerance: float = 1e-3,
    *,
    num_candidates: int = NUM_CANDIDATES,
    group: Group = None,
    tp_group: Group = None,
    on_step: Optional[Callable[[float, float], None]] = None,
    final_per_neuron: bool = False,
    dense_cache_bytes: int = 1 << 30,
    stages: Optional[StageAgreement] = None,
) -> PPLSearchResult:
    """Bisect c ∈ [0, 1] so that the mean PPL ratio over ``models`` reaches ``1 + p/100``.

    ``batch_sets[i]`` are the validation batches of ``models[i]`` (usually the same list).
    ``on_step(c, ratio)`` is called after every trial (progress bars, logs).
    ``dense_cache_bytes`` bounds the activations kept between trials (per model; see
    :class:`SearchCache`). ``stages``: under pipeline parallelism (each model a stage), keeps the
    stages' bisection and caching decisions identical.
    """
    if len(models) == 0 or len(models) != len(batch_sets):
        raise ValueError(f"need one batch set per model (got {len(models)} models, {len(batch_sets)} sets)")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    target = 1.0 + p / 100.0

    caches = [SearchCache(dense_cache_bytes, stages) for _ in models]

    def mean_ratio(c: float) -> float:
        evals = [
            evaluate_cett(m, b, c, num_candidates=num_candidates, group=group, tp_group=tp_group, cache=cache)
            for m, b, cache in zip(models, batch_sets, caches)
        ]
        ratio = sum(e.ppl_ratio for e in evals) / len(evals)
        return ratio if stages is None else stages.value(ratio)

    low, high, iterations, history = 0.0, 1.0, 0, []
    while high - low > tolerance:
        mid = (low + high) / 2
        ratio = mean_ratio(mid)
        history.append((mid, ratio))
        iterations += 1
        if on_step is not None:
            on_step(mid, ratio)
        if ratio < target:
            low = mid
        else:
            high = mid
    cett = (low + high) / 2
    final = [
        evaluate_cett(
            m,
            b,
            cett,
            num_candidates=num_candidates,
            group=group,
            tp_group=tp_group,
            per_neuron=final_per_neuron,
            cache=cache,
        )
        for m, b, cache in zip(models, batch_sets, caches)
    ]
    return PPLSearchResult(
        cett=cett,
        target_ratio=target,
        ppl_ratio=sum(e.ppl_ratio for e in final) / len(final),
        low=low,
        high=high,
        iterations=iterations,
        evaluations=final,
        history=history,
    )

"""CETT: per-layer thresholds for a target CETT value (docs/sparsing-law.md §1.2–1.3).

For one layer, with the intermediate ``h`` (input of ``down_proj``, ``[T, f]`` over the tokens
that have a target) and ``W_down`` (``[d, f]``):

    norm[t, i] = |h[t, i]| · ‖W_down[:, i]‖₂            the L2 norm of neuron i's output n_i
    CETT(τ)    = mean_t ‖h_tail[t] · W_downᵀ‖ / ‖h[t] · W_downᵀ‖
                 with h_tail = h where norm ≤ τ, else 0   (the dropped tail; "zero norm > τ")

CETT is the token-average of per-token relative errors (as the authors' code), not a ratio of
sums. The threshold for a CETT value c is found on a grid: ``linspace(min(norm), q99, 65536)``
(q99 = 0.99-quantile of a strided ~65,536-value subsample, which drops the extreme values),
then a binary search for the first candidate whose CETT exceeds c; the answer is the candidate
before it, i.e. the largest candidate with CETT ≤ c (CETT is monotone in τ up to noise). The
sparse forward then zeroes ``h_i`` where ``norm_i < τ``.

Distributed (docs/design.md §5): two groups take part.

* ``group`` — the data-parallel group: its ranks hold different tokens of the same neurons.
  ``None`` with torch.distributed initialised means the default (world) group, as in
  torch.distributed; without torch.distributed everything is local.
* ``tp_group`` — the tensor-parallel group: its ranks hold the same tokens and a slice
  ``[r·f/tp, (r+1)·f/tp)`` of every layer's neurons (h ``[T, f/tp]``, W_down ``[d, f/tp]``).
  ``None`` (or one rank) means no tensor parallelism, as in ``megasparse.parallel``. Under TP
  the data group must be passed explicitly (``None`` would mean the world, TP ranks included).

What is reduced where:

* neuron norms are local (each column of W_down lives on one rank);
* grid minimum: MIN over TP and DP; q99: the quantile of ONE strided subsample of the GLOBAL
  ``[T_global, f]`` norm matrix, gathered from the ranks that hold its entries (see
  :func:`candidate_thresholds`), so the grid is a function of the global matrix only;
* dense output and tail error: the partial products ``h_local · W_localᵀ`` ([T, d]) are SUMMED
  over TP before the per-token norm; the per-token relative errors are summed over DP, tokens
  counted over DP only (every TP rank sees the same tokens).

Every rank of both groups then takes the same search path and ends at the same τ.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megasparse.kernels.availability import triton_kernels_usable
from megasparse.parallel.collectives import Group, group_rank, group_size

NUM_CANDIDATES = 65536  # the authors' grid size
SUBSAMPLE = 65536  # values in the strided subsample that gives q99
GRID_QUANTILE = 0.99


def _distributed(group) -> bool:
    """Data-parallel group semantics: ``None`` is the world when torch.distributed is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if _distributed(group):
        dist.all_reduce(t, op=op, group=group)
    return t


def _tp_all_reduce(t: torch.Tensor, op, tp_group: Group) -> torch.Tensor:
    """Tensor-parallel group semantics: ``None`` or one rank means no TP (a no-op)."""
    if group_size(tp_group) > 1:
        dist.all_reduce(t, op=op, group=tp_group)
    return t


def check_groups(group: Group, tp_group: Group) -> None:
    """Refuses ``group=None`` under TP: it would mean the world, and sum the TP ranks' tokens."""
    if group_size(tp_group) > 1 and group is None:
        raise ValueError(
            "CETT calibration under tensor parallelism needs the data-parallel group "
            "(e.g. ParallelGroups.dp_group), not None: None would mean the whole world, "
            "which also holds the tensor-parallel ranks"
        )


def gather_values(values: torch.Tensor, group: Group, distributed: bool) -> torch.Tensor:
    """Concatenation (rank order) of every rank's 1-D ``values``, whatever their lengths."""
    if not distributed:
        return values
    n = dist.get_world_size(group)
    lengths = torch.tensor([values.numel()], dtype=torch.int64, device=values.device)
    all_lengths = [torch.empty_like(lengths) for _ in range(n)]
    dist.all_gather(all_lengths, lengths, group=group)
    sizes = [int(x) for x in all_lengths]
    padded = torch.zeros(max(sizes), dtype=values.dtype, device=values.device)
    padded[: values.numel()] = values
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


def _token_offset(tokens: int, group: Group, device) -> tuple[int, int]:
    """(tokens of the DP ranks before this one, tokens of all DP ranks)."""
    if not _distributed(group):
        return 0, tokens
    mine = torch.tensor([tokens], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(every, mine, group=group)
    counts = [int(x) for x in every]
    return sum(counts[: dist.get_rank(group)]), sum(counts)


def down_column_norms(w_down: torch.Tensor) -> torch.Tensor:
    """‖W_down[:, i]‖₂ per neuron, float32 [f] (w_down is [d, f])."""
    return w_down.detach().float().norm(dim=0)


def neuron_output_norms(h: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """|h| · ‖W_down[:, i]‖ → float32, same shape as h ([..., f])."""
    return h.float().abs() * column_norms


def strided_entries(norms: torch.Tensor, stride: int, first_index: int, row_length: int) -> torch.Tensor:
    """Entries of ``norms`` [T, f_local] whose GLOBAL flat index is a multiple of ``stride``.

    Entry (t, j) has global index ``first_index + t·row_length + j`` in the global row-major
    [T_global, f] matrix (``first_index`` = token offset · f + neuron offset). Row-major order.
    """
    rows, cols = norms.shape
    if rows == 0 or cols == 0:
        return norms.new_zeros(0)
    device = norms.device
    starts = first_index + torch.arange(rows, device=device, dtype=torch.int64) * row_length  # [T]
    first_col = (-starts) % stride  # [T], the first picked column of each row
    picks = (cols + stride - 1) // stride  # at most this many picks per row
    columns = first_col[:, None] + torch.arange(picks, device=device, dtype=torch.int64) * stride  # [T, K]
    inside = columns < cols
    values = norms.gather(1, columns.clamp_max(cols - 1))  # [T, K]
    return values[inside]


def candidate_thresholds(
    norms: torch.Tensor, num_candidates: int = NUM_CANDIDATES, group: Group = None, tp_group: Group = None
) -> torch.Tensor:
    """``linspace(min(norm), q99, num_candidates)`` of one layer's GLOBAL [T_global, f] norm matrix.

    ``norms`` is this rank's block ``[T, f/tp]`` (or ``[..., f/tp]``). The minimum is all-reduced
    (MIN) over TP and DP. q99 is the 0.99-quantile of the entries whose global flat index is a
    multiple of ``stride = max(1, T_global·f // SUBSAMPLE)``; global order = DP ranks in rank order
    (each rank's tokens in order), then neurons in TP rank order, i.e. the matrix one process
    would build from the DP ranks' batches concatenated along the batch dimension. Each rank
    picks the entries of its block and the picks are gathered over TP and DP. With one process
    this is exactly ``flat[::stride]``.

    Invariant: the SET of subsampled values, hence min, q99 and the grid, depend only on the
    global matrix, not on TP or DP sizes (rounding of h itself may differ between layouts).
    """
    check_groups(group, tp_group)
    block = norms.reshape(-1, norms.shape[-1]).float()  # [T, f/tp]
    tp, tp_rank = group_size(tp_group), group_rank(tp_group)
    full_f = block.shape[1] * tp
    token_offset, global_tokens = _token_offset(block.shape[0], group, block.device)
    stride = max(1, global_tokens * full_f // SUBSAMPLE)
    sub = strided_entries(block, stride, token_offset * full_f + tp_rank * block.shape[1], full_f)
    sub = gather_values(sub, tp_group, tp > 1)
    sub = gather_values(sub, group, _distributed(group))
    lo = (block.min() if block.numel() else block.new_tensor(float("inf"))).reshape(1)
    _tp_all_reduce(lo, dist.ReduceOp.MIN, tp_group)
    _all_reduce(lo, dist.ReduceOp.MIN, group)
    hi = torch.quantile(sub, GRID_QUANTILE).reshape(1)
    hi = torch.maximum(hi, lo)  # a layer with >99% exact zeros: a degenerate (constant) grid
    return torch.linspace(float(lo), float(hi), num_candidates, device=norms.device)


def exact_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x · wᵀ`` in float32 ([T, k] · [d, k]ᵀ → [T, d]) with float32 accumulation.

    bf16 inputs on a GPU run on the tensor cores with a float32 result: the product of two bf16
    values is exact in float32, so this is the float32 GEMM of the same values up to the order of
    the additions, at bf16 speed. Everywhere else both sides are cast to float32.
    """
    if x.is_cuda and x.dtype == torch.bfloat16 and w.dtype == torch.bfloat16:
        return torch.mm(x, w.t(), out_dtype=torch.float32)
    return F.linear(x.float(), w.float())


def probes_keep_norms(h: torch.Tensor) -> bool:
    """Whether a :class:`LayerCETT` of this ``h`` keeps a float32 norm matrix of h's shape (off a
    GPU, or without Triton): then several layers' probe states at once cost that much each."""
    return not (triton_kernels_usable(h, "triton_cett_tail") and h.is_contiguous())


class LayerCETT:
    """CETT(τ) of one layer on fixed tokens: keeps the neuron norms and the dense output norms.

    Args:
        h: ``[T, f/tp]`` intermediate values of the tokens with a target (any float dtype; kept
            as it is, not copied: the tail of every probe is taken from it).
        w_down: ``[d, f/tp]`` down projection weight (this rank's columns under TP).
        group: data-parallel group (see the module docstring); tp_group: tensor-parallel group.
        dense_norms, tokens: ``‖h · W_downᵀ‖`` per token [T] and the DP-wide token count from an
            earlier instance on the same tokens (a search that meets the same batch again skips
            the dense GEMM and the collectives; the values are the same).
    """

    def __init__(
        self,
        h: torch.Tensor,
        w_down: torch.Tensor,
        group: Group = None,
        tp_group: Group = None,
        *,
        dense_norms: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ):
        check_groups(group, tp_group)
        self.h = h  # [T, f/tp]
        self.w = w_down.detach()  # [d, f/tp]
        if not (h.is_cuda and h.dtype == self.w.dtype == torch.bfloat16):
            self.w = self.w.float()  # cast once, not per probe
        self.group, self.tp_group = group, tp_group
        self.column_norms = down_column_norms(self.w)  # float32 [f/tp]
        # On a GPU a probe recomputes each entry's norm from h (one fused pass, no stored norms);
        # elsewhere the float32 norm matrix is kept and compared.
        self._fused_tail = not probes_keep_norms(self.h)
        self._norms = None if self._fused_tail else neuron_output_norms(self.h, self.column_norms)
        self.y_norm = self._full_output(self.h).norm(dim=-1) if dense_norms is None else dense_norms  # [T]
        if tokens is None:
            # Tokens over DP only: the TP ranks of one group see the same tokens.
            tokens = torch.tensor([float(self.h.shape[0])], device=self.h.device, dtype=torch.float64)
            _all_reduce(tokens, dist.ReduceOp.SUM, group)
        self.tokens = tokens

    @property
    def norms(self) -> torch.Tensor:
        """float32 [T, f/tp]: each entry's output norm |h| · ‖W_down[:, i]‖ (computed anew when
        the probes do not keep it)."""
        return self._norms if self._norms is not None else neuron_output_norms(self.h, self.column_norms)

    def _full_output(self, h: torch.Tensor) -> torch.Tensor:
        """``h · W_downᵀ`` over ALL neurons, float32 [T, d]: the TP ranks' partial products summed."""
        return _tp_all_reduce(exact_linear(h, self.w), dist.ReduceOp.SUM, self.tp_group)

    def error_sum(self, tau: float) -> torch.Tensor:
        """This rank's sum over its tokens of the relative errors at τ: float64 [1] on h's device,
        not yet summed over DP. Launches the probe's kernels and returns without a host sync."""
        if self._fused_tail:
            from megasparse.kernels.triton_cett_tail import cett_tail

            tail = cett_tail(self.h, self.column_norms, tau)  # [T, f/tp]
        else:
            tail = torch.where(self._norms <= tau, self.h, torch.zeros((), dtype=self.h.dtype, device=self.h.device))
        err = self._full_output(tail).norm(dim=-1)  # [T]
        # A token whose dense output is exactly zero has nothing to lose: relative error 0.
        rel = torch.where(self.y_norm > 0, err / self.y_norm.clamp_min(1e-30), torch.zeros_like(err))
        return rel.double().sum().reshape(1)

    def __call__(self, tau: float) -> float:
        """Token-mean relative error of dropping every neuron with norm ≤ τ."""
        return probe_together([(self, tau)])[0]


def probe_together(probes: Sequence[tuple[LayerCETT, float]]) -> list[float]:
    """CETT(τ) of several (layer, τ) pairs whose kernels are all launched before any result is
    read: one host sync and one DP all-reduce for the lot instead of one each, so the GPU does not
    idle between probes while the host waits for a value and launches the next probe.

    Every layer must share the data-parallel group (the layers of one model do). Each value is
    computed exactly as a lone probe computes it (the same float64 division of the same sums).
    """
    if not probes:
        return []
    totals = torch.cat([layer.error_sum(tau) for layer, tau in probes])  # float64 [n]
    _all_reduce(totals, dist.ReduceOp.SUM, probes[0][0].group)
    tokens = torch.cat([layer.tokens for layer, _ in probes])  # float64 [n]
    return (totals / tokens.clamp_min(1)).tolist()


def search_grid(cett_of: "LayerCETT", candidates: torch.Tensor, target: float) -> float:
    """Largest candidate whose CETT does not exceed ``target`` (binary search, as the authors).

    If even the smallest candidate exceeds it (possible for SiLU, where no norm is exactly 0),
    returns 0.0: nothing is dropped. (The authors' ``thresholds[left-1]`` would wrap around to the
    LAST candidate there, dropping ~99% of the layer; we do not copy that.)
    """
    left, right = 0, candidates.numel()
    while left < right:
        mid = (left + right) // 2
        if cett_of(float(candidates[mid])) > target:
            right = mid
        else:
            left = mid + 1
    return float(candidates[left - 1]) if left > 0 else 0.0


class LayerThresholdSearch:
    """One layer on fixed tokens, searched for many CETT targets: the grid is built once and every
    CETT(candidate) evaluated is remembered. The PPL-p% bisection asks ~10 targets of the same
    tokens, and their binary searches over the same grid share most of their probes.

    Between targets the search can :meth:`release` the layer's activations and keep only what is
    small (the grid, the remembered CETT values, the per-token dense norms); :meth:`reattach` hands
    it the same tokens' ``h`` again when a later target needs new probes. So a bisection over many
    layers holds one layer's ``[T, f]`` tensors at a time.

    Every rank probes the same indices in the same order (the values are global), so the
    collectives inside CETT(τ) stay matched across ranks.
    """

    def __init__(
        self,
        h: torch.Tensor,
        w_down: torch.Tensor,
        num_candidates: int = NUM_CANDIDATES,
        group: Group = None,
        tp_group: Group = None,
    ):
        self.group, self.tp_group = group, tp_group
        self.layer: LayerCETT | None = LayerCETT(h.reshape(-1, h.shape[-1]), w_down, group, tp_group)
        self.candidates = candidate_thresholds(self.layer.norms, num_candidates, group, tp_group)
        # The candidates as Python floats: a probe then needs no device-to-host copy for its τ.
        self._grid = self.candidates.tolist()
        self._dense_norms, self._tokens = self.layer.y_norm, self.layer.tokens
        self._cett_at: dict[int, float] = {}

    def release(self) -> None:
        """Drops the activations and the ``[T, f]`` norms; the grid and the results stay."""
        self.layer = None

    def reattach(self, h: torch.Tensor, w_down: torch.Tensor) -> None:
        """The same tokens' ``h`` again (from a recomputed dense pass), for new probes."""
        self.layer = LayerCETT(
            h.reshape(-1, h.shape[-1]),
            w_down,
            self.group,
            self.tp_group,
            dense_norms=self._dense_norms,
            tokens=self._tokens,
        )

    def cett_at(self, index: int) -> float:
        if index not in self._cett_at:
            self._cett_at[index] = probe_together([(self._attached(), self._grid[index])])[0]
        return self._cett_at[index]

    def _attached(self) -> LayerCETT:
        if self.layer is None:
            raise RuntimeError("this search was released: reattach the layer's h before probing further")
        return self.layer

    def threshold_for(self, cett: float) -> float:
        """The same answer as :func:`search_grid` on this layer's grid."""
        return thresholds_in_lockstep([self], cett)[0]


def thresholds_in_lockstep(searches: Sequence[LayerThresholdSearch], cett: float) -> list[float]:
    """:meth:`LayerThresholdSearch.threshold_for` of every search (layers of one model on the same
    tokens), with the same answers: each search walks its own binary search over its remembered
    probes, and the probes the searches need next are computed together (:func:`probe_together`),
    one host sync per bisection step of all layers instead of one per probe.

    Every rank asks the same probes in the same order (the values are global), so the collectives
    inside the probes stay matched.
    """
    bounds = [(0, len(search._grid)) for search in searches]  # (left, right) per search
    while True:
        wanted: list[tuple[int, int]] = []  # (search, grid index) to probe in this step
        for n, search in enumerate(searches):
            left, right = bounds[n]
            while left < right:
                mid = (left + right) // 2
                known = search._cett_at.get(mid)
                if known is None:
                    wanted.append((n, mid))
                    break
                if known > cett:
                    right = mid
                else:
                    left = mid + 1
            bounds[n] = (left, right)
        if not wanted:
            break
        values = probe_together([(searches[n]._attached(), searches[n]._grid[mid]) for n, mid in wanted])
        for (n, mid), value in zip(wanted, values):
            searches[n]._cett_at[mid] = value
    return [search._grid[left - 1] if left > 0 else 0.0 for search, (left, _) in zip(searches, bounds)]


def layer_threshold_for_cett(
    h: torch.Tensor,
    w_down: torch.Tensor,
    cett: float,
    num_candidates: int = NUM_CANDIDATES,
    group: Group = None,
    tp_group: Group = None,
) -> float:
    """τ_l for CETT value ``cett`` on one layer (h [T, f/tp] of valid tokens, w_down [d, f/tp])."""
    return LayerThresholdSearch(h, w_down, num_candidates, group, tp_group).threshold_for(cett)


def layer_thresholds_for_cett(
    hs: list[torch.Tensor],
    down_weights: list[torch.Tensor],
    cett: float,
    num_candidates: int = NUM_CANDIDATES,
    group: Group = None,
    tp_group: Group = None,
) -> torch.Tensor:
    """τ per layer (float32 [L]) for one shared CETT value; hs[l] is [T, f/tp] (or [b, s, f/tp])."""
    taus = [
        layer_threshold_for_cett(h.reshape(-1, h.shape[-1]), w, cett, num_candidates, group, tp_group)
        for h, w in zip(hs, down_weights)
    ]
    return torch.tensor(taus, dtype=torch.float32)


def cett_of_threshold(
    h: torch.Tensor, w_down: torch.Tensor, tau: float, group: Group = None, tp_group: Group = None
) -> float:
    """Token-averaged CETT of one layer when neurons with norm ≤ τ are dropped."""
    return LayerCETT(h.reshape(-1, h.shape[-1]), w_down, group, tp_group)(tau)


def neuron_thresholds(layer_thresholds: torch.Tensor, down_weights: list[torch.Tensor]) -> torch.Tensor:
    """τ_l / ‖W_down[:, i]‖ per (layer, neuron), float32 [L, f]: the per-neuron bound on |h_i|.

    Under TP pass this rank's W_down shards: the result is this rank's columns [L, f/tp].

    A zero column never contributes, so its bound is +inf (never kept) — same rule as the
    training counters.
    """
    norms = torch.stack([down_column_norms(w).cpu() for w in down_weights])  # [L, f]
    tau = layer_thresholds.detach().float().cpu()[:, None]
    return torch.where(norms > 0, tau / norms.clamp_min(1e-30), torch.full_like(norms, float("inf")))

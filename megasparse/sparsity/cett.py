"""CETT: per-layer thresholds for a target CETT value (reference/sparsing-law.md §1.2–1.3).

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

Distributed: ``group`` is the data-parallel group whose ranks hold different tokens of the same
neurons; min/q99 of the grid and the CETT sums are all-reduced over it, so every rank takes the
same search path and ends at the same τ. ``group=None`` with torch.distributed initialised means
the default (world) group; without torch.distributed everything is local.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

NUM_CANDIDATES = 65536  # the authors' grid size
SUBSAMPLE = 65536  # values in the strided subsample that gives q99
GRID_QUANTILE = 0.99


def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    if _distributed(group):
        dist.all_reduce(t, op=op, group=group)
    return t


def down_column_norms(w_down: torch.Tensor) -> torch.Tensor:
    """‖W_down[:, i]‖₂ per neuron, float32 [f] (w_down is [d, f])."""
    return w_down.detach().float().norm(dim=0)


def neuron_output_norms(h: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """|h| · ‖W_down[:, i]‖ → float32, same shape as h ([..., f])."""
    return h.float().abs() * column_norms


def candidate_thresholds(norms: torch.Tensor, num_candidates: int = NUM_CANDIDATES,
                         group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """``linspace(min(norm), q99, num_candidates)`` with min and q99 all-reduced (MIN / MAX)."""
    flat = norms.reshape(-1)
    stride = max(1, flat.numel() // SUBSAMPLE)
    sub = flat[::stride].float()
    lo = flat.min().float().reshape(1)
    hi = torch.quantile(sub, GRID_QUANTILE).reshape(1)
    _all_reduce(lo, dist.ReduceOp.MIN, group)
    _all_reduce(hi, dist.ReduceOp.MAX, group)
    hi = torch.maximum(hi, lo)  # a layer with >99% exact zeros: a degenerate (constant) grid
    return torch.linspace(float(lo), float(hi), num_candidates, device=norms.device)


class LayerCETT:
    """CETT(τ) of one layer on fixed tokens: caches norms and the dense output norms.

    Args:
        h: ``[T, f]`` intermediate values of the tokens with a target (any float dtype).
        w_down: ``[d, f]`` down projection weight.
    """

    def __init__(self, h: torch.Tensor, w_down: torch.Tensor, group: Optional[dist.ProcessGroup] = None):
        self.h = h.float()  # [T, f]
        self.w = w_down.detach().float()  # [d, f]
        self.group = group
        self.norms = neuron_output_norms(self.h, down_column_norms(self.w))  # [T, f]
        self.y_norm = F.linear(self.h, self.w).norm(dim=-1)  # [T]
        self.tokens = torch.tensor([float(self.h.shape[0])], device=self.h.device, dtype=torch.float64)
        _all_reduce(self.tokens, dist.ReduceOp.SUM, group)

    def __call__(self, tau: float) -> float:
        """Token-mean relative error of dropping every neuron with norm ≤ τ."""
        tail = torch.where(self.norms <= tau, self.h, torch.zeros_like(self.h))  # [T, f]
        err = F.linear(tail, self.w).norm(dim=-1)  # [T]
        # A token whose dense output is exactly zero has nothing to lose: relative error 0.
        rel = torch.where(self.y_norm > 0, err / self.y_norm.clamp_min(1e-30), torch.zeros_like(err))
        total = rel.double().sum().reshape(1)
        _all_reduce(total, dist.ReduceOp.SUM, self.group)
        return float(total / self.tokens.clamp_min(1))


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


def layer_threshold_for_cett(h: torch.Tensor, w_down: torch.Tensor, cett: float,
                             num_candidates: int = NUM_CANDIDATES,
                             group: Optional[dist.ProcessGroup] = None) -> float:
    """τ_l for CETT value ``cett`` on one layer (h [T, f] of valid tokens, w_down [d, f])."""
    layer = LayerCETT(h, w_down, group)
    return search_grid(layer, candidate_thresholds(layer.norms, num_candidates, group), cett)


def layer_thresholds_for_cett(hs: list[torch.Tensor], down_weights: list[torch.Tensor], cett: float,
                              num_candidates: int = NUM_CANDIDATES,
                              group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """τ per layer (float32 [L]) for one shared CETT value; hs[l] is [T, f] (or [b, s, f])."""
    taus = [layer_threshold_for_cett(h.reshape(-1, h.shape[-1]), w, cett, num_candidates, group)
            for h, w in zip(hs, down_weights)]
    return torch.tensor(taus, dtype=torch.float32)


def cett_of_threshold(h: torch.Tensor, w_down: torch.Tensor, tau: float,
                      group: Optional[dist.ProcessGroup] = None) -> float:
    """Token-averaged CETT of one layer when neurons with norm ≤ τ are dropped."""
    return LayerCETT(h.reshape(-1, h.shape[-1]), w_down, group)(tau)


def neuron_thresholds(layer_thresholds: torch.Tensor, down_weights: list[torch.Tensor]) -> torch.Tensor:
    """τ_l / ‖W_down[:, i]‖ per (layer, neuron), float32 [L, f]: the per-neuron bound on |h_i|.

    A zero column never contributes, so its bound is +inf (never kept) — same rule as the
    training counters.
    """
    norms = torch.stack([down_column_norms(w).cpu() for w in down_weights])  # [L, f]
    tau = layer_thresholds.detach().float().cpu()[:, None]
    return torch.where(norms > 0, tau / norms.clamp_min(1e-30), torch.full_like(norms, float("inf")))

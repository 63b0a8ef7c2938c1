"""The paper's baseline rules for "which neurons are weakly contributed" (docs/sparsing-law.md §1.2).

Each returns a bool KEEP mask with the shape of its input ([..., f]); masked entries of h are
zeroed by the sparse pass (``inspect.sparse_pass``).

* ``zero``: drop ``s_i = 0`` (the straightforward ReLU rule; for SiLU it keeps almost all).
  The training counters' "zero-threshold active" (``s > 0``) equals it for ReLU.
* ``fat`` (FAT-ε): drop ``|s_i| < ε``, one global ε for all layers (the authors' ``abs < ε + 1e-18``).
* ``topk``: keep the ``k`` neurons with the largest ``|s_i|`` for EACH token (the paper's text);
  ``k`` is given as the kept fraction of d_f.
* ``topk-batch``: the authors' code (``prune_topk``) instead flattens all tokens of the batch
  in the layer and keeps the largest ``fraction × numel`` entries of ``|s|`` — a batch-level
  top-k, NOT per token. Labelled apart so results say which one they used.
* ``cett``: keep ``|h_i| · ‖W_down[:, i]‖ ≥ τ_l``, i.e. ``|h_i| ≥ τ_l / ‖W_down[:, i]‖``.
"""

from __future__ import annotations

import math

import torch

METHODS = ("cett", "fat", "topk", "topk-batch", "zero")
NEEDS_GATE = {"fat", "topk", "topk-batch", "zero"}


def zero_threshold_mask(s: torch.Tensor) -> torch.Tensor:
    """keep s ≠ 0."""
    return s != 0


def fat_mask(s: torch.Tensor, eps: float) -> torch.Tensor:
    """FAT-ε: keep |s| ≥ ε (+1e-18, so ε = 0 still drops exact zeros, as the authors' code)."""
    return s.float().abs() >= eps + 1e-18


def _kept_count(fraction: float, n: int) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}")
    return max(1, min(n, int(round(fraction * n))))


def topk_per_token_mask(s: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the round(fraction·f) largest |s_i| of every token (ties: torch.topk's choice)."""
    k = _kept_count(fraction, s.shape[-1])
    idx = s.float().abs().topk(k, dim=-1).indices  # [..., k]
    return torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True)


def topk_batch_mask(s: torch.Tensor, fraction: float) -> torch.Tensor:
    """Authors' variant: keep the round(fraction·numel) largest |s| over ALL tokens of the batch."""
    flat = s.float().abs().reshape(-1)
    k = _kept_count(fraction, flat.numel())
    idx = flat.topk(k).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(0, idx, True).reshape(s.shape)


def cett_mask(h: torch.Tensor, neuron_thresholds: torch.Tensor) -> torch.Tensor:
    """Keep |h_i| ≥ τ_l / ‖W_down[:, i]‖ (neuron_thresholds [f], on h's device)."""
    return h.float().abs() >= neuron_thresholds


def baseline_mask(method: str, s: torch.Tensor, arg: float) -> torch.Tensor:
    """Dispatch for the gate-based rules (``fat``, ``topk``, ``topk-batch``, ``zero``)."""
    if method == "zero":
        return zero_threshold_mask(s)
    if method == "fat":
        if not (arg >= 0 and math.isfinite(arg)):
            raise ValueError(f"FAT-ε needs ε ≥ 0, got {arg}")
        return fat_mask(s, arg)
    if method == "topk":
        return topk_per_token_mask(s, arg)
    if method == "topk-batch":
        return topk_batch_mask(s, arg)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")

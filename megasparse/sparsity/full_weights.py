"""Whole weights for measurements, also when ZeRO-3 partitions them over data-parallel ranks.

Under ZeRO-3 a parameter outside its module's forward is an empty placeholder: each rank holds a
flat 1/DP slice (``ds_tensor``), and DeepSpeed gathers the whole tensor only while the owning
module runs. The measurements read W_down directly (column norms for thresholds, the tail error
of CETT), so they need it gathered. Without ZeRO-3 every function here is a no-op.
"""

from __future__ import annotations

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    """True for a ZeRO-3 parameter (its data lives in per-rank slices)."""
    return hasattr(param, "ds_tensor")


def full_shape(param: torch.Tensor) -> torch.Size:
    """The parameter's real shape, also for a ZeRO-3 placeholder (whose ``.shape`` is empty)."""
    return torch.Size(param.ds_shape) if is_partitioned(param) else param.shape


def full_copies(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters themselves, or, under ZeRO-3, detached whole copies gathered from all ranks.

    Collective under ZeRO-3: every rank of the data-parallel group must call it with the same
    parameters. The copies stay valid after DeepSpeed partitions the parameters again (they
    cost the memory of the gathered tensors until dropped).
    """
    if not any(is_partitioned(p) for p in params):
        return list(params)
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return [p.detach().clone() for p in params]

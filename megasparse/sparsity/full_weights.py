"""Whole weights for measurements, also when ZeRO-3 partitions them over data-parallel ranks.

Under ZeRO-3 a parameter outside its module's forward is an empty placeholder: each rank holds a
flat 1/DP slice (``ds_tensor``), and DeepSpeed gathers the whole tensor only while the owning
module runs. The measurements read W_down directly (column norms for thresholds, the tail error
of CETT), so they need it gathered. Without ZeRO-3 nothing is gathered or copied.
"""

from __future__ import annotations

import contextlib

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    """True for a ZeRO-3 parameter (its data lives in per-rank slices)."""
    return hasattr(param, "ds_tensor")


def full_shape(param: torch.Tensor) -> torch.Size:
    """The parameter's real shape, also for a ZeRO-3 placeholder (whose ``.shape`` is empty)."""
    return torch.Size(param.ds_shape) if is_partitioned(param) else param.shape


def whole(param: torch.Tensor):
    """A context in which ``param`` holds its whole tensor: a no-op, or a ZeRO-3 gather (collective)."""
    if not is_partitioned(param):
        return contextlib.nullcontext()
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    if getattr(param, "ds_persist", False) and param.ds_status is ZeroParamStatus.AVAILABLE:
        # A persistent parameter (ZeRO-3 keeps small ones whole on every rank for good):
        # gathering would partition it on exit, and the next forward would gather it back.
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param], modifier_rank=None)


def full_copies(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters themselves, or, under ZeRO-3, detached whole copies gathered from all ranks.

    Collective under ZeRO-3: every rank of the data-parallel group must call it with the same
    parameters. One parameter is gathered at a time, so the peak is the copies plus one
    gathered tensor; the copies stay valid after DeepSpeed partitions the parameters again.
    """
    copies = []
    for p in params:
        with whole(p):
            copies.append(p.detach().clone() if is_partitioned(p) else p)
    return copies


def column_norms(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """‖W[:, i]‖₂ per column of each 2-D parameter, float32 [f] each (gathered one by one under ZeRO-3)."""
    norms = []
    for p in params:
        with whole(p):
            norms.append(p.detach().float().norm(dim=0))
    return norms

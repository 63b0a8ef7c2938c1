"""The gated activation on one fused gate/up projection's output gu [..., 2f] = (g, u).

The same kernels as megasparse/kernels/triton_gated_activation.py, launched on the two halves of
gu in place (rows 2f elements apart); the backward writes d(gu) as one tensor, so neither
direction copies or concatenates. Values, counts and gradients are those of the two-tensor call.
"""

from __future__ import annotations

from typing import Optional

import torch

from megasparse.kernels.gated_activation import Activation, CountTarget
from megasparse.kernels.triton_gated_activation import ACTIVATION_CODES, _backward, _forward


class _PackedGatedActivationFunction(torch.autograd.Function):
    """The same on one tensor gu [..., 2f] = (g, u) side by side, the output of one fused gate/up
    projection: the kernels read the two halves in place and backward writes d(gu) [..., 2f]
    directly, so neither direction copies or concatenates."""

    @staticmethod
    def forward(ctx, gu: torch.Tensor, activation: Activation, counts: Optional[CountTarget]) -> torch.Tensor:
        shape = gu.shape
        f = shape[-1] // 2
        gu2 = gu.contiguous().view(-1, 2 * f)  # [T, 2f]
        h2 = _forward(gu2[:, :f], gu2[:, f:], activation, counts, None)  # [T, f]
        ctx.save_for_backward(gu2)
        ctx.activation = activation
        ctx.shape = shape
        return h2.view(*shape[:-1], f)

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        (gu2,) = ctx.saved_tensors
        f = gu2.shape[1] // 2
        dgu2 = torch.empty_like(gu2)  # [T, 2f]
        _backward(dh.contiguous().view(-1, f), gu2[:, :f], gu2[:, f:], ctx.activation, (dgu2[:, :f], dgu2[:, f:]))
        return dgu2.view(ctx.shape), None, None


def gated_activation_packed_triton(
    gu: torch.Tensor, activation: Activation, counts: Optional[CountTarget] = None
) -> torch.Tensor:
    """``σ(g) ⊙ u`` for gu [..., 2f] holding g then u along the last dimension -> [..., f], with
    the same kernels and counts as :func:`gated_activation_triton` (differentiable)."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"unknown activation {activation!r} (expected 'relu' or 'silu')")
    if gu.dim() == 0 or gu.shape[-1] % 2:
        raise ValueError(f"gu must hold g and u side by side in an even last dimension; got {tuple(gu.shape)}")
    return _PackedGatedActivationFunction.apply(gu, activation, counts)

"""The gated MLP's elementwise core ``h = σ(g) ⊙ u`` with optional activation counting.

This module is the interface every implementation honours:

* :func:`gated_activation` is what the model calls. It dispatches to the fused Triton kernel
  on CUDA (when available and selected) and to :func:`gated_activation_reference` elsewhere.
* When a :class:`CountTarget` is given, the call adds, per neuron (last dimension):
  ``active``          += #tokens with ``σ(g) > 0`` (equivalently ``g > 0`` for ReLU and SiLU;
  a NaN ``g`` counts as active, so a model gone NaN never reads as sparse),
  ``above_threshold`` += #tokens with ``|h| ≥ thresholds`` (h as stored, i.e. after rounding to
  the output dtype — the value the down projection actually sees),
  ``tokens``          += #tokens counted.
  Rows excluded by ``row_mask`` are not counted. Counting never changes ``h`` or its gradient.

Semantics are in docs/design.md §4; both implementations must give identical counts on identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from megasparse.config import ActivationName, KernelImpl
from megasparse.kernels.availability import triton_kernels_usable

Activation = ActivationName


@dataclass
class CountTarget:
    """Where one layer's counts go for one forward call (all on the activations' device)."""

    active: torch.Tensor  # int64 [f]
    tokens: torch.Tensor  # int64 [] (0-d)
    above_threshold: Optional[torch.Tensor] = None  # int64 [f]; needs `thresholds`
    thresholds: Optional[torch.Tensor] = None  # float32 [f]: active iff |h_i| ≥ thresholds[i]
    row_mask: Optional[torch.Tensor] = None  # bool [tokens]; False rows are not counted


def activation_fn(activation: Activation):
    if activation == "relu":
        return F.relu
    if activation == "silu":
        return F.silu
    raise ValueError(f"unknown activation {activation!r} (expected 'relu' or 'silu')")


@torch.no_grad()
def count_activations_reference(g: torch.Tensor, h: torch.Tensor, target: CountTarget) -> None:
    """Adds the counts of one call to ``target``; g, h: [..., f]."""
    f = g.shape[-1]
    g2 = g.reshape(-1, f)  # [T, f]
    h2 = h.reshape(-1, f)  # [T, f]
    if target.row_mask is not None:
        keep = target.row_mask.reshape(-1)
        g2, h2 = g2[keep], h2[keep]
    # not (g ≤ 0) rather than g > 0: a NaN counts as active, so a broken model never reads as sparse
    target.active += (~(g2 <= 0)).sum(dim=0, dtype=torch.int64)
    target.tokens += g2.shape[0]
    if target.above_threshold is not None:
        if target.thresholds is None:
            raise ValueError("CountTarget.above_threshold needs CountTarget.thresholds")
        target.above_threshold += (h2.float().abs() >= target.thresholds).sum(dim=0, dtype=torch.int64)


def gated_activation_reference(
    g: torch.Tensor, u: torch.Tensor, activation: Activation, counts: Optional[CountTarget] = None
) -> torch.Tensor:
    """PyTorch reference: σ computed in fp32, the product rounded once to the input dtype."""
    h = (activation_fn(activation)(g.float()) * u.float()).to(g.dtype)
    if counts is not None:
        count_activations_reference(g, h, counts)
    return h


def gated_activation(
    g: torch.Tensor,
    u: torch.Tensor,
    activation: Activation,
    counts: Optional[CountTarget] = None,
    impl: KernelImpl = "auto",
) -> torch.Tensor:
    """``σ(g) ⊙ u`` for g, u of shape [..., f]; counts into ``counts`` when given."""
    if g.shape != u.shape:
        raise ValueError(f"gate and up shapes differ: {tuple(g.shape)} vs {tuple(u.shape)}")
    use_triton = impl == "triton" or (impl == "auto" and triton_kernels_usable(g, "triton_gated_activation"))
    if use_triton:
        from megasparse.kernels.triton_gated_activation import gated_activation_triton

        return gated_activation_triton(g, u, activation, counts)
    return gated_activation_reference(g, u, activation, counts)


def gated_activation_packed(
    gu: torch.Tensor,
    activation: Activation,
    counts: Optional[CountTarget] = None,
    impl: KernelImpl = "auto",
) -> torch.Tensor:
    """``σ(g) ⊙ u`` for gu [..., 2f] = (g, u) side by side (one fused gate/up projection) -> [..., f].

    The same values, counts and gradients as ``gated_activation(g, u)``; the Triton path reads
    both halves in place and its backward writes d(gu) in one tensor.
    """
    if gu.dim() == 0 or gu.shape[-1] % 2:
        raise ValueError(f"gu must hold g and u side by side in an even last dimension; got {tuple(gu.shape)}")
    use_triton = impl == "triton" or (impl == "auto" and triton_kernels_usable(gu, "triton_gated_activation"))
    if use_triton:
        from megasparse.kernels.triton_gated_activation_packed import gated_activation_packed_triton

        return gated_activation_packed_triton(gu, activation, counts)
    g, u = gu.chunk(2, dim=-1)  # [..., f] views each
    return gated_activation_reference(g, u, activation, counts)

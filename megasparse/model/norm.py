"""RMSNorm, the only normalisation in the model (pre-norm, no bias)."""

from __future__ import annotations

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight ⊙ x / sqrt(mean(x²) + eps)`` over the last dimension: [..., d] -> [..., d]."""
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 (or fp64 if given)
    inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * (x32 * inv_rms).to(x.dtype)


class RMSNorm(nn.Module):
    """``weight ⊙ x / sqrt(mean(x²) + eps)`` over the last dimension.

    The statistics are computed in fp32 and the normalised value is cast back to the input dtype
    *before* the weight multiplies it — the same order as Hugging Face Llama, so an exported model
    reproduces our logits in bf16 too.
    """

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        # A plain attribute (not a submodule) so compile_regions.py can swap in a compiled copy.
        self.norm_fn = rms_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., d]
        return self.norm_fn(x, self.norm_weight(), self.eps)

    def norm_weight(self) -> torch.Tensor:
        """The weight as the norm function takes it (a subclass may route it through a
        collective first, which then stays outside any compiled norm function)."""
        return self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def add_rms_norm(
    x: torch.Tensor, branch: torch.Tensor, scale: float, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual update and the next pre-norm together: (x + scale·branch, rms_norm of it).

    x, branch: [..., d]. One function so that compiled it reads x and the branch once and writes
    the new residual stream and the normed value in one kernel (and one kernel in backward).
    """
    x = x + scale * branch
    return x, rms_norm(x, weight, eps)

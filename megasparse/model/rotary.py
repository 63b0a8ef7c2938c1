"""Rotary position embedding (RoPE), rotate-half convention as in Hugging Face Llama.

The head dimension is split into two halves (not interleaved pairs): channel j is rotated together
with channel j + head_dim/2 by the angle ``position · base^(-2j/head_dim)``. Using the same
convention as Llama means an exported checkpoint needs no permutation of the q/k weights.
"""

from __future__ import annotations

import torch


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for the given positions: [b, s] (or [s]) -> two [b, s, head_dim].

    Angles are computed in fp32 (bf16 positions would be wrong beyond 256) and only the final
    tables are cast to the activations' dtype, as Llama does. Computing the inverse frequencies
    on the fly (hd/2 numbers) avoids a buffer that ``model.to(bf16)`` would silently round.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None]  # [1, s]
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (base**exponent)  # [hd/2]
    angles = position_ids.float()[..., None] * inv_freq  # [b, s, hd/2]
    angles = torch.cat((angles, angles), dim=-1)  # [b, s, hd]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates queries or keys. x: [b, heads, s, hd]; cos, sin: [b, s, hd]."""
    cos, sin = cos[:, None], sin[:, None]  # [b, 1, s, hd], broadcast over heads
    return x * cos + rotate_half(x) * sin


def apply_rotary_bshd(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The same rotation on the projection's own layout. x: [b, s, heads, hd]; cos, sin: [b, s, hd].

    Rotating q and k before any transpose lets SDPA take [b, heads, s, hd] *views* of [b, s, heads,
    hd] tensors, and its output viewed back is already [b, s, heads·hd]: no transposing copies.
    """
    cos, sin = cos[:, :, None], sin[:, :, None]  # [b, s, 1, hd], broadcast over heads
    return x * cos + rotate_half(x) * sin


def split_qkv_rotary(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused q/k/v projection's output [b, s, 3, heads, hd] -> rotated q, rotated k and v,
    each [b, s, heads, hd]. One function, so that compiled it is one kernel forward and one
    backward writing d(qkv) whole (no concatenation of three gradients)."""
    q, k, v = qkv.unbind(2)
    return apply_rotary_bshd(q, cos, sin), apply_rotary_bshd(k, cos, sin), v.contiguous()

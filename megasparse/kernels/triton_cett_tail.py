"""The tail of one CETT probe in a single pass: ``h`` where the neuron's output norm is ≤ τ, else 0.

A probe of CETT(τ) (``sparsity/cett.py``) multiplies the dropped part of ``h`` by W_downᵀ. Built
from tensors, that part costs a float32 ``[T, f]`` norm matrix kept per layer and two passes per
probe: ``norms <= τ`` (4 bytes read, 1 written per entry) and ``where`` (1 + 2 read, 2 written).
This kernel recomputes each norm from ``h`` and the column norms instead, so a probe reads h once
and writes the tail once (2 + 2 bytes per bf16 entry), and no norm matrix is kept.

The norm is the same float32 product as ``neuron_output_norms`` (|h| cast exactly to float32,
times ‖W_down[:, i]‖, one rounding, no fused multiply-add), so the kept entries, and with them
every CETT value, are bit for bit those of the tensor path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cett_tail_kernel(
    h_ptr,  # [T, f] contiguous
    column_norms_ptr,  # [f] float32
    tail_ptr,  # [T, f] out, h's dtype
    tokens,
    width,
    tau,  # float32
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    col_ok = cols < width
    inside = (rows < tokens)[:, None] & col_ok[None, :]
    offsets = rows.to(tl.int64)[:, None] * width + cols[None, :]
    h = tl.load(h_ptr + offsets, mask=inside, other=0.0)
    c = tl.load(column_norms_ptr + cols, mask=col_ok, other=0.0)
    norms = tl.abs(h.to(tl.float32)) * c[None, :]  # one float32 rounding, as the tensor path
    tail = tl.where(norms <= tau, h, tl.zeros_like(h))  # NaN norms compare false: dropped from the tail
    tl.store(tail_ptr + offsets, tail, mask=inside)


def cett_tail(h: torch.Tensor, column_norms: torch.Tensor, tau: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``h`` [T, f] (contiguous) where ``|h| · column_norms ≤ tau`` (float32), else 0; into ``out``
    (h's shape and dtype) when given. ``column_norms`` is float32 [f]."""
    if h.dim() != 2 or not h.is_contiguous():
        raise ValueError(f"h must be a contiguous [T, f] tensor; got {tuple(h.shape)}")
    if column_norms.dtype != torch.float32 or column_norms.shape != (h.shape[1],):
        raise ValueError(
            f"column_norms must be float32 [{h.shape[1]}]; got {column_norms.dtype} {tuple(column_norms.shape)}"
        )
    tail = torch.empty_like(h) if out is None else out
    tokens, width = h.shape
    if h.numel() == 0:
        return tail
    # 32 × 128 tiles, 4 warps: an elementwise pass at full memory bandwidth on an H100/H200.
    block_t, block_f = 32, 128
    grid = (triton.cdiv(tokens, block_t), triton.cdiv(width, block_f))
    _cett_tail_kernel[grid](h, column_norms, tail, tokens, width, tau, BLOCK_T=block_t, BLOCK_F=block_f, num_warps=4)
    return tail

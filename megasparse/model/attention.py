"""Multi-head causal self-attention with RoPE (full MHA; q/k/v biases only with ``attention_bias``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megasparse.config import ModelConfig
from megasparse.model.layers import LayerFactory, fused_column_linear, has_hooks
from megasparse.model.rotary import apply_rotary, apply_rotary_bshd, split_qkv_rotary


class Attention(nn.Module):
    """``o_proj(softmax(q kᵀ/√hd + mask) v)`` with rotary q and k.

    Separate q/k/v parameters (rather than one fused matrix) keep the parameter names and shapes
    one-to-one with a Llama checkpoint and make per-head tensor-parallel slicing trivial.

    Two speed switches, set by ``megasparse.model.fast_path`` from the run config; both compute
    the same function:
      * ``fused_projections``: q, k and v come from one GEMM over the concatenated weights;
      * ``bshd_layout``: rotary works on the projections' [b, s, heads, hd] layout and SDPA gets
        transposed *views*, so no [b, s, h, hd] ↔ [b, h, s, hd] copies (the fused path always
        does).
    """

    def __init__(self, config: ModelConfig, factory: LayerFactory) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        d, a = config.hidden_size, config.attention_size
        bias = config.attention_bias
        self.q_proj = factory.column(d, a, bias=bias)
        self.k_proj = factory.column(d, a, bias=bias)
        self.v_proj = factory.column(d, a, bias=bias)
        self.o_proj = factory.row(a, d)
        # Plain attributes (not submodules) so compile_regions.py can swap in compiled copies.
        self.rotary = apply_rotary
        self.rotary_bshd = apply_rotary_bshd
        self.split_qkv_rotary = split_qkv_rotary
        self.fused_projections = False
        self.bshd_layout = False

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated q, k and v as [b, heads, s, hd] (views of [b, s, heads, hd] on the fast paths)."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if self.fused_projections and not any(map(has_hooks, projections)):
            qkv = fused_column_linear(x, projections)  # [b, s, 3·heads·hd]
            b, s = qkv.shape[:2]
            q, k, v = self.split_qkv_rotary(qkv.view(b, s, 3, -1, self.head_dim), cos, sin)  # [b, s, h, hd]
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [b, s, heads·hd] each
        # b, s from the projections, not x: under sequence parallelism x holds s/tp positions
        # and the column-parallel projections gather the whole sequence.
        b, s = q.shape[:2]
        # [b, s, heads·hd] -> [b, s, heads, hd]; heads inferred so a TP shard works unchanged.
        q, k, v = (t.view(b, s, -1, self.head_dim) for t in (q, k, v))
        if self.bshd_layout:
            q, k = self.rotary_bshd(q, cos, sin), self.rotary_bshd(k, cos, sin)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, s, hd]
        return self.rotary(q, cos, sin), self.rotary(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,  # [b, s, d] ([b, s/tp, d] under sequence parallelism)
        cos: torch.Tensor,  # [b or 1, s, hd]
        sin: torch.Tensor,  # [b or 1, s, hd]
        attention_mask: Optional[torch.Tensor] = None,  # bool [b, 1, s, s]; None = plain causal
    ) -> torch.Tensor:
        q, k, v = self._qkv(x, cos, sin)  # [b, heads, s, hd] each
        if attention_mask is None:
            # Fast path: lets SDPA pick the flash kernel.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        b, s = out.shape[0], out.shape[2]
        out = out.transpose(1, 2).reshape(b, s, -1)  # [b, s, heads·hd]; a view if SDPA wrote bshd
        return self.o_proj(out)  # [b, s, d]

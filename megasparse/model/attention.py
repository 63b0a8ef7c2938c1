"""Multi-head causal self-attention with RoPE (full MHA; q/k/v biases only with ``attention_bias``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megasparse.config import ModelConfig
from megasparse.model.layers import LayerFactory
from megasparse.model.rotary import apply_rotary


class Attention(nn.Module):
    """``o_proj(softmax(q kᵀ/√hd + mask) v)`` with rotary q and k.

    Separate q/k/v projections (rather than one fused matrix) keep the parameter names and
    shapes one-to-one with a Llama checkpoint and make per-head tensor-parallel slicing trivial.
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
        # A plain attribute (not a submodule) so compile_regions.py can swap in a compiled copy.
        self.rotary = apply_rotary

    def forward(
        self,
        x: torch.Tensor,  # [b, s, d] ([b, s/tp, d] under sequence parallelism)
        cos: torch.Tensor,  # [b or 1, s, hd]
        sin: torch.Tensor,  # [b or 1, s, hd]
        attention_mask: Optional[torch.Tensor] = None,  # bool [b, 1, s, s]; None = plain causal
    ) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [b, s, heads·hd] each
        # b, s from the projections, not x: under sequence parallelism x holds s/tp positions
        # and the column-parallel projections gather the whole sequence.
        b, s = q.shape[:2]
        # [b, s, heads·hd] -> [b, heads, s, hd]; heads inferred so a TP shard works unchanged.
        q = q.view(b, s, -1, self.head_dim).transpose(1, 2)
        k = k.view(b, s, -1, self.head_dim).transpose(1, 2)
        v = v.view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = self.rotary(q, cos, sin), self.rotary(k, cos, sin)
        if attention_mask is None:
            # Fast path: lets SDPA pick the flash kernel.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(b, s, -1)  # [b, s, heads·hd]
        return self.o_proj(out)  # [b, s, d]

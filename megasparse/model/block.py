"""One pre-norm transformer block with µP residual scaling."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from megasparse.config import ModelConfig
from megasparse.model.attention import Attention
from megasparse.model.layers import LayerFactory
from megasparse.model.mlp import MLP


class Block(nn.Module):
    """``x += c·attn(norm(x)); x += c·mlp(norm(x))`` with c = scale_depth/√L (MiniCPM µP).

    Scaling each residual branch by 1/√L keeps the residual stream's variance independent of
    depth, so learning rates transfer across the paper's width–depth sweep.
    """

    def __init__(self, config: ModelConfig, factory: LayerFactory, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.residual_scale = config.scale_depth / math.sqrt(config.num_layers)
        self.attn_norm = factory.norm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config, factory)
        self.mlp_norm = factory.norm(config.hidden_size, config.norm_eps)
        self.mlp = MLP(config, factory, layer_index)

    def forward(
        self,
        x: torch.Tensor,  # [b, s, d] ([b, s/tp, d] under sequence parallelism)
        cos: torch.Tensor,  # [b or 1, s, hd]
        sin: torch.Tensor,  # [b or 1, s, hd]
        attention_mask: Optional[torch.Tensor] = None,  # bool [b, 1, s, s]
    ) -> torch.Tensor:
        x = x + self.residual_scale * self.attn(self.attn_norm(x), cos, sin, attention_mask)
        x = x + self.residual_scale * self.mlp(self.mlp_norm(x))
        return x  # [b, s, d]

"""One pre-norm transformer block with µP residual scaling."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from megasparse.config import ModelConfig
from megasparse.model.attention import Attention
from megasparse.model.layers import LayerFactory, has_hooks
from megasparse.model.mlp import MLP
from megasparse.model.norm import RMSNorm, add_rms_norm
from megasparse.model.recompute import checkpoint_context_fn


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
        # Set by megasparse.model.fast_path: the attention residual update and the MLP's pre-norm
        # as one function (compile_regions.py compiles it into one kernel). A plain attribute so
        # that it can be swapped for the compiled copy.
        self.fused_residual_norm = False
        self.add_rms_norm = add_rms_norm
        # Selective activation checkpointing, set by the model that holds the block: "attention"
        # or "mlp" recomputes that branch in backward ("full", the whole block, is done outside).
        self.recompute = "none"

    def _branch(self, part: str, fn, *args: torch.Tensor) -> torch.Tensor:
        if self.recompute == part and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False, context_fn=checkpoint_context_fn)
        return fn(*args)

    def _attention_branch(self, x, cos, sin, attention_mask):
        return self.attn(self.attn_norm(x), cos, sin, attention_mask)

    def forward(
        self,
        x: torch.Tensor,  # [b, s, d] ([b, s/tp, d] under sequence parallelism)
        cos: torch.Tensor,  # [b or 1, s, hd]
        sin: torch.Tensor,  # [b or 1, s, hd]
        attention_mask: Optional[torch.Tensor] = None,  # bool [b, 1, s, s]
    ) -> torch.Tensor:
        branch = self._branch("attention", self._attention_branch, x, cos, sin, attention_mask)  # [b, s, d]
        norm = self.mlp_norm
        if self.fused_residual_norm and isinstance(norm, RMSNorm) and not has_hooks(norm):
            # norm_weight(): under SP the weight's collective runs here, outside the fused function.
            x, normed = self.add_rms_norm(x, branch, self.residual_scale, norm.norm_weight(), norm.eps)
        else:
            x = x + self.residual_scale * branch
            normed = norm(x)
        x = x + self.residual_scale * self._branch("mlp", self.mlp, normed)
        return x  # [b, s, d]

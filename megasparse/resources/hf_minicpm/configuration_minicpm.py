"""MiniCPM's configuration for transformers, written by megasparse's hf-minicpm export.

MiniCPM's µP decoder is Granite's computation under other names, so this configuration derives
Granite's multipliers from MiniCPM's keys:

    embedding_multiplier = scale_emb
    residual_multiplier  = scale_depth / sqrt(num_hidden_layers)
    logits_scaling       = hidden_size / dim_model_base
    attention_multiplier = 1 / sqrt(head_dim)

``hidden_act: fatrelu`` with ``hidden_act_param`` (the threshold) is accepted as vLLM and SGLang
read it; threshold 0 is ReLU.
"""

import math

from transformers.models.granite.configuration_granite import GraniteConfig


class MiniCPMConfig(GraniteConfig):
    model_type = "minicpm"

    def __init__(self, scale_emb=1.0, scale_depth=1.0, dim_model_base=None, hidden_act_param=0.0, **kwargs):
        self.scale_emb = scale_emb
        self.scale_depth = scale_depth
        self.dim_model_base = dim_model_base
        self.hidden_act_param = hidden_act_param
        super().__init__(**kwargs)
        layers, width = self.num_hidden_layers, self.hidden_size
        head_dim = getattr(self, "head_dim", None) or width // self.num_attention_heads
        self.embedding_multiplier = scale_emb
        self.residual_multiplier = scale_depth / math.sqrt(layers)
        self.logits_scaling = width / (dim_model_base or width)
        self.attention_multiplier = 1.0 / math.sqrt(head_dim)

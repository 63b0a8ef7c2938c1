"""The transformer: norm, rotary attention, gated MLP, µP scalings (see transformer.py)."""

from megasparse.model.flops import flops_per_token, non_embedding_param_count, param_count
from megasparse.model.layers import LOCAL_LAYERS, LayerFactory
from megasparse.model.mlp import MLP, CountSlot
from megasparse.model.mup import mup_param_groups
from megasparse.model.recompute import in_recompute
from megasparse.model.transformer import Transformer

__all__ = [
    "CountSlot",
    "LOCAL_LAYERS",
    "LayerFactory",
    "MLP",
    "Transformer",
    "flops_per_token",
    "in_recompute",
    "mup_param_groups",
    "non_embedding_param_count",
    "param_count",
]

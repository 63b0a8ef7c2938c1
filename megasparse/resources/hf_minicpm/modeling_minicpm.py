"""MiniCPM (1 and 2, dense) for transformers, written by megasparse's hf-minicpm export.

The computation is Granite's (see configuration_minicpm.py for the mapping of the scales), so
the model classes are Granite's with MiniCPM's configuration. ``hidden_act: fatrelu`` builds the
MLPs with FATReLU at ``hidden_act_param``: x where x > threshold, else 0 (ReLU at threshold 0).
"""

import torch
from torch import nn
from transformers.models.granite.modeling_granite import GraniteForCausalLM, GraniteModel

from .configuration_minicpm import MiniCPMConfig


class FATReLU(nn.Module):
    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.threshold, x, torch.zeros_like(x))


class _FATReLUFromConfig:
    """Builds the Granite module with ReLU, then swaps in FATReLU when ``fatrelu`` is asked for
    (Granite's MLP looks ``hidden_act`` up in transformers' ACT2FN, which has no fatrelu)."""

    def __init__(self, config):
        fatrelu = config.hidden_act == "fatrelu"
        if fatrelu:
            config.hidden_act = "relu"
        try:
            super().__init__(config)
        finally:
            if fatrelu:
                config.hidden_act = "fatrelu"
        if fatrelu:
            for module in self.modules():
                if hasattr(module, "act_fn") and hasattr(module, "down_proj"):
                    module.act_fn = FATReLU(config.hidden_act_param)


class MiniCPMModel(_FATReLUFromConfig, GraniteModel):
    config_class = MiniCPMConfig


class MiniCPMForCausalLM(_FATReLUFromConfig, GraniteForCausalLM):
    config_class = MiniCPMConfig

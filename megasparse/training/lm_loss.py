"""The module DeepSpeed trains: the decoder plus next-token cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalLMLoss(nn.Module):
    """Wraps the model; ``forward(tokens [b, s+1])`` → mean next-token loss (fp32 scalar)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        inputs, labels = tokens[:, :-1], tokens[:, 1:]  # [b, s] each
        logits = self.model(inputs)  # [b, s, V]
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))

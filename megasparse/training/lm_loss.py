"""The module DeepSpeed trains: the decoder plus next-token cross-entropy."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megasparse.parallel.cross_entropy import vocab_parallel_cross_entropy


class CausalLMLoss(nn.Module):
    """Wraps the model; ``forward(tokens [b, s+1])`` → mean next-token loss (fp32 scalar).

    With tensor parallelism the model's logits are this rank's vocabulary shard [b, s, V/tp];
    the vocab-parallel cross-entropy then never gathers the full logits.
    """

    def __init__(self, model: nn.Module, tp_group: Optional[dist.ProcessGroup] = None):
        super().__init__()
        self.model = model
        self.tp_group = tp_group

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        inputs, labels = tokens[:, :-1], tokens[:, 1:]  # [b, s] each
        logits = self.model(inputs)  # [b, s, V] or [b, s, V/tp]
        if self.tp_group is not None:
            return vocab_parallel_cross_entropy(logits, labels, self.tp_group).mean()
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))

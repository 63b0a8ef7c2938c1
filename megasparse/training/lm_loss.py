"""The module DeepSpeed trains: the decoder plus next-token cross-entropy."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from megasparse.parallel.cross_entropy import mean_cross_entropy
from megasparse.parallel.head_loss import chunked_head_loss


class CausalLMLoss(nn.Module):
    """Wraps the model; ``forward(tokens [b, s+1])`` → mean next-token loss (fp32 scalar).

    With tensor parallelism the model's logits are this rank's vocabulary shard [b, s, V/tp];
    the vocab-parallel cross-entropy then never gathers the full logits.

    ``chunk_tokens > 0`` runs the output head and the loss together ``chunk_tokens`` tokens at
    a time, so the full fp32 logits [b·s, V] never exist (megasparse/kernels/linear_cross_entropy.py
    on one rank; under TP megasparse/parallel/chunked_cross_entropy.py, where each rank holds
    only [chunk, V/tp] logits); 0 computes all logits and then the loss.
    """

    def __init__(self, model: nn.Module, tp_group: Optional[dist.ProcessGroup] = None, chunk_tokens: int = 0):
        super().__init__()
        if chunk_tokens < 0:
            raise ValueError(f"chunk_tokens must be >= 0 (got {chunk_tokens})")
        self.model = model
        self.tp_group = tp_group
        self.chunk_tokens = chunk_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        inputs, labels = tokens[:, :-1], tokens[:, 1:]  # [b, s] each
        if self.chunk_tokens:
            hidden = self.model.forward_hidden(inputs)  # [b, s, d] ([b, s/tp, d] under SP)
            return chunked_head_loss(self.model, hidden, labels, self.tp_group, self.chunk_tokens)
        logits = self.model(inputs)  # [b, s, V] or [b, s, V/tp]
        return mean_cross_entropy(logits, labels, self.tp_group)

"""The output head and the next-token loss of a :class:`~megasparse.model.transformer.Transformer`,
chunk by chunk, from its final hidden state: the full logits [b·s, V] never exist.

Training (``CausalLMLoss`` with ``train.loss_chunk_tokens``) and the sparsity measurements (dense
and sparse passes of the CETT search) share it, so both compute the same loss the same way.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from megasparse.parallel.chunked_cross_entropy import vocab_parallel_linear_cross_entropy


def chunked_head_loss(
    model: nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    tp_group: Optional[dist.ProcessGroup],
    chunk_tokens: int,
) -> torch.Tensor:
    """hidden [b, s, d] from ``model.forward_hidden`` ([b, s/tp, d] under SP), labels [b, s] →
    mean next-token loss (fp32 scalar, the same on every TP rank).

    Each TP rank holds only [chunk, V/tp] logits; µP's ``(h / scale_width) @ Embᵀ`` as
    ``Transformer.logits``.
    """
    hidden = model.layer_factory.head_input(hidden)  # [b, s, d] on every TP rank
    return vocab_parallel_linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]),
        model.head_weight,
        labels.reshape(-1),
        tp_group,
        scale=1.0 / model.config.scale_width,
        chunk_tokens=chunk_tokens,
    )

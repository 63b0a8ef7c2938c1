"""The pipeline's ``loss_fn``: next-token cross-entropy on the last stage.

DeepSpeed's pipeline engine calls ``loss_fn(outputs, labels)`` with what the last layer returned.
Two forms:

* :class:`NextTokenLoss` takes logits ([b, s, V], or this rank's vocabulary shard under TP) and
  computes the mean cross-entropy from them (the full-logits loss).
* :class:`ChunkedNextTokenLoss` (``train.loss_chunk_tokens > 0``) takes the final-normed hidden
  state instead and runs the output head and the loss together, chunk by chunk, as ``CausalLMLoss``
  does in the other layouts, so the last stage never holds the full logits. The head's weight
  lives in the last stage's modules (the tied embedding copy or the untied head), found once by
  ``bind``; its gradient reaches it through autograd like any other parameter's.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from megasparse.config import ModelConfig
from megasparse.model.layers import LayerFactory
from megasparse.parallel.chunked_cross_entropy import vocab_parallel_linear_cross_entropy
from megasparse.parallel.collectives import Group
from megasparse.parallel.cross_entropy import mean_cross_entropy


class NextTokenLoss:
    """``loss_fn(logits, labels)``: mean next-token cross-entropy, fp32.

    With TP the logits are this rank's vocabulary shard and the vocab-parallel cross-entropy is
    used; without, the same computation as ``CausalLMLoss``.
    """

    def __init__(self, tp_group: Group = None) -> None:
        self.tp_group = tp_group

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return mean_cross_entropy(logits, labels, self.tp_group)


class ChunkedNextTokenLoss:
    """``loss_fn(hidden, labels)``: the output head and the loss in chunks of ``chunk_tokens``.

    hidden: the final-normed hidden state [b, s, d] ([b, s/tp, d] under sequence parallelism);
    labels: [b, s]. Call :meth:`bind` with the stage module before the first use.
    """

    def __init__(self, config: ModelConfig, factory: LayerFactory, chunk_tokens: int, tp_group: Group = None):
        self.config, self.factory = config, factory
        self.chunk_tokens, self.tp_group = chunk_tokens, tp_group
        self._head_weight: Optional[Callable[[], torch.Tensor]] = None

    def bind(self, head_weight: Callable[[], torch.Tensor]) -> None:
        """``head_weight()`` returns this stage's head matrix [V, d] ([V/tp, d] under TP)."""
        self._head_weight = head_weight

    def __call__(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._head_weight is None:
            raise RuntimeError("ChunkedNextTokenLoss.bind was not called: the loss does not know the head")
        full = self.factory.head_input(hidden)  # [b, s, d] on every TP rank
        return vocab_parallel_linear_cross_entropy(
            full.reshape(-1, full.shape[-1]),
            self._head_weight(),
            labels.reshape(-1),
            self.tp_group,
            scale=1.0 / self.config.scale_width,  # µP's logits = (h / scale_width) @ Hᵀ
            chunk_tokens=self.chunk_tokens,
        )


def last_stage_head_weight(module: nn.Module, head_owner: type, tied_key: str) -> Callable[[], torch.Tensor]:
    """A getter of the head matrix held by this stage: the untied head of ``head_owner`` (the final
    norm piece) or the tied embedding copy DeepSpeed keeps under ``tied_key``."""

    def weight() -> torch.Tensor:
        for m in module.modules():
            if isinstance(m, head_owner) and m.lm_head is not None:
                return m.lm_head.weight
        tied = getattr(module, "tied_modules", {})
        if tied_key in tied:
            return tied[tied_key].embed.weight
        raise RuntimeError("this pipeline stage holds no output head; only the last stage computes the loss")

    return weight

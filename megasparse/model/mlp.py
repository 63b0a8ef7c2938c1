"""The feed-forward layer, where activation sparsity lives.

Gated (the paper's): ``y = W_down(σ(W_gate x) ⊙ W_up x)``; ungated: ``y = W_down σ(W_up x)``.
The elementwise core goes through :func:`gated_activation`, which also counts active neurons
when the training code asks for it (docs/design.md §4).

Counting hook. The model knows nothing of training. Code outside sets, per MLP:
  * ``count_slot`` — None, or an object with ``target(h_shape) -> Optional[CountTarget]``. It is
    asked on every forward (including recomputation under activation checkpointing, where
    ``megasparse.model.recompute.in_recompute()`` is True, so the slot can decline to count).
  * ``counter_impl`` — "auto" | "reference" | "triton", passed through as ``impl``.
With no slot, or a slot that answers None, the kernel gets ``counts=None`` and costs nothing extra.
``layer_index`` tells the slot's owner which layer this is (global index, stable across PP splits).
For CETT calibration, a forward pre-hook on ``down_proj`` sees the intermediate h itself.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
from torch import nn

from megasparse.config import KernelImpl, ModelConfig
from megasparse.kernels.gated_activation import (
    CountTarget,
    activation_fn,
    count_activations_reference,
    gated_activation,
    gated_activation_packed,
)
from megasparse.model.layers import LayerFactory, fused_column_linear, has_hooks


class CountSlot(Protocol):
    """What the training code plugs into ``MLP.count_slot``."""

    def target(self, h_shape: torch.Size) -> Optional[CountTarget]: ...


class MLP(nn.Module):
    """Gated (or plain) feed-forward block with an optional activation-count hook."""

    def __init__(self, config: ModelConfig, factory: LayerFactory, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.activation = config.activation
        self.gated = config.gated
        d, f = config.hidden_size, config.ffn_size
        if self.gated:
            self.gate_proj = factory.column(d, f)
        self.up_proj = factory.column(d, f)
        self.down_proj = factory.row(f, d)
        self.count_slot: Optional[CountSlot] = None
        self.counter_impl: KernelImpl = "auto"
        # Set by megasparse.model.fast_path: gate and up as one GEMM over the concatenated
        # weights, the activation reading both halves of its output in place (same function).
        self.fused_projections = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [b, s, d] -> [b, s, d]
        if self.gated and self.fused_projections and not (has_hooks(self.gate_proj) or has_hooks(self.up_proj)):
            gu = fused_column_linear(x, (self.gate_proj, self.up_proj))  # [b, s, 2f]
            h_shape = gu.shape[:-1] + (gu.shape[-1] // 2,)
            counts = self.count_slot.target(h_shape) if self.count_slot is not None else None
            h = gated_activation_packed(gu, self.activation, counts=counts, impl=self.counter_impl)
        elif self.gated:
            g = self.gate_proj(x)  # [b, s, f]
            u = self.up_proj(x)  # [b, s, f]
            counts = self.count_slot.target(g.shape) if self.count_slot is not None else None
            h = gated_activation(g, u, self.activation, counts=counts, impl=self.counter_impl)
        else:
            g = self.up_proj(x)  # [b, s, f]; the pre-activation plays the gate's role in counts
            counts = self.count_slot.target(g.shape) if self.count_slot is not None else None
            h = activation_fn(self.activation)(g)
            if counts is not None:
                count_activations_reference(g, h, counts)
        return self.down_proj(h)  # [b, s, d]

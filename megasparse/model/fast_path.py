"""The speed switches of the model, set from the run config after the model is built.

Each computes the same function as the plain path (same parameters, names, shapes and
tensor-parallel slices; the activation counters count the same), only with fewer kernels or
copies (measurements: benchmarks/RESULTS.md, docs/performance.md):

* ``fused_projections``: q/k/v and gate/up each as one GEMM over concatenated weights; the
  gated activation reads both halves of the gate/up output in place.
* ``bshd_layout``: rotary on the projections' [b, s, heads, hd] layout, so attention needs no
  transposing copies (implied by ``fused_projections`` for q/k/v).
* ``fused_residual_norm``: the attention residual update and the MLP's pre-norm as one function
  (one kernel when compiled).

A module whose forward is hooked (measurement probes, ZeRO-3's parameter gathering) takes the
plain path, so hooks always see what they expect.
"""

from __future__ import annotations

from torch import nn

from megasparse.model.attention import Attention
from megasparse.model.block import Block
from megasparse.model.mlp import MLP


def apply_fast_path(
    model: nn.Module, *, fused_projections: bool, bshd_layout: bool, fused_residual_norm: bool
) -> dict[str, int]:
    """Sets the switches on every attention, MLP and block of ``model`` (a Transformer or a
    pipeline stage); returns how many modules of each kind were switched on."""
    counts = {"attention": 0, "mlp": 0, "block": 0}
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_projections, module.bshd_layout = fused_projections, bshd_layout
            counts["attention"] += fused_projections or bshd_layout
        elif isinstance(module, MLP):
            module.fused_projections = fused_projections and module.gated
            counts["mlp"] += module.fused_projections
        elif isinstance(module, Block):
            module.fused_residual_norm = fused_residual_norm
            counts["block"] += fused_residual_norm
    return counts

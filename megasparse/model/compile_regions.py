"""Regional torch.compile: the model's elementwise chains become fused kernels.

In eager mode an RMSNorm is six kernels (cast, square, mean, add-rsqrt, multiply, cast back,
weight) and the rotary embedding five per tensor (two halves, negate, concatenate, two
multiply-adds), each reading and writing the whole activation. Compiled, each is one kernel.

Only these regions are compiled, not whole blocks: they hold no collectives (tensor-parallel
layers all-reduce in their own autograd functions; the sequence-parallel RMSNorm stays eager),
no activation counters (the fused Triton kernel already does that work) and no Python state, so
they compile the same in every layout and never graph-break. Compilation happens on first use
per input shape, i.e. in the first training step, and again for evaluation when its batch shape
differs.
"""

from __future__ import annotations

import torch
from torch import nn

from megasparse.model.attention import Attention
from megasparse.model.norm import RMSNorm, rms_norm
from megasparse.model.rotary import apply_rotary


def compile_regions(model: nn.Module) -> dict[str, int]:
    """Points every RMSNorm and every attention of ``model`` at compiled functions, in place.

    The modules keep their parameters, names and hooks; only the function their forward calls
    changes. Each function is compiled once for all layers (weights are its inputs, so layers
    share one graph), and module hooks — ZeRO-3's parameter gathering among them — run outside
    the compiled code. Returns how many modules of each kind now use compiled code.
    """
    # One compiled function each for all layers.
    norm, rotary = torch.compile(rms_norm, dynamic=False), torch.compile(apply_rotary, dynamic=False)
    compiled = {"rms_norm": 0, "rotary": 0}
    for module in model.modules():
        # Exactly RMSNorm: the sequence-parallel subclass all-reduces its weight gradient in
        # an autograd function, a collective that stays out of compiled regions.
        if type(module) is RMSNorm:
            module.norm_fn = norm
            compiled["rms_norm"] += 1
        elif isinstance(module, Attention):
            module.rotary = rotary
            compiled["rotary"] += 1
    return compiled

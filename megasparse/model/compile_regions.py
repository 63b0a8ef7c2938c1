"""Regional torch.compile: the model's elementwise chains become fused kernels.

In eager mode an RMSNorm is six kernels (cast, square, mean, add-rsqrt, multiply, cast back,
weight) and the rotary embedding five per tensor (two halves, negate, concatenate, two
multiply-adds), each reading and writing the whole activation. Compiled, each is one kernel.
The fast path's functions (megasparse/model/fast_path.py) are compiled too: the q/k/v split with
rotary, and the residual update with the next RMSNorm.

Only these regions are compiled, not whole blocks: they hold no collectives (tensor-parallel
layers all-reduce in their own autograd functions; the sequence-parallel RMSNorm passes its
weight through its collective *before* calling the compiled norm), no activation counters (the
fused Triton kernel already does that work) and no Python state, so they compile the same in
every layout and never graph-break. Compilation happens on first use per input shape, i.e. in
the first training step, and again for evaluation when its batch shape differs.
"""

from __future__ import annotations

import torch
from torch import nn

from megasparse.model.attention import Attention
from megasparse.model.block import Block
from megasparse.model.norm import RMSNorm, add_rms_norm, rms_norm
from megasparse.model.rotary import apply_rotary, apply_rotary_bshd, split_qkv_rotary


def compile_regions(model: nn.Module) -> dict[str, int]:
    """Points every RMSNorm, attention and block of ``model`` at compiled functions, in place.

    The modules keep their parameters, names and hooks; only the functions their forward calls
    change. Each function is compiled once for all layers (weights are its inputs, so layers
    share one graph), and module hooks — ZeRO-3's parameter gathering among them — run outside
    the compiled code. Returns how many modules of each kind now use compiled code.
    """

    def compiled(fn):
        return torch.compile(fn, dynamic=False)

    norm, rotary, rotary_bshd = compiled(rms_norm), compiled(apply_rotary), compiled(apply_rotary_bshd)
    qkv_rotary, residual_norm = compiled(split_qkv_rotary), compiled(add_rms_norm)
    counts = {"rms_norm": 0, "rotary": 0, "residual_norm": 0}
    for module in model.modules():
        # Every RMSNorm, the sequence-parallel one included (its collective is outside norm_fn).
        if isinstance(module, RMSNorm):
            module.norm_fn = norm
            counts["rms_norm"] += 1
        elif isinstance(module, Attention):
            module.rotary, module.rotary_bshd, module.split_qkv_rotary = rotary, rotary_bshd, qkv_rotary
            counts["rotary"] += 1
        elif isinstance(module, Block):
            module.add_rms_norm = residual_norm
            counts["residual_norm"] += 1
    return counts

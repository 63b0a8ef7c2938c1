"""A column-parallel linear whose backward overlaps its collectives with its own GEMMs.

The plain path (``train.tp_comm_overlap: false``) wraps ``F.linear`` in the autograd pairs of
collectives.py, so in the backward every collective runs while nothing else does. Here one
autograd function does the linear and its communication, in Megatron's order:

    forward   total = all-gather(x) under SP, else x;  y = total Wᵀ (+ b)
              saves x as it came in: under SP the local [b, s/tp, in] shard, not the gathered
              [b, s, in] input (tp times less activation memory for every column layer)
    backward  SP: start re-gathering x                                    ┐ overlapped
              grad_total = grad_y W                        [b, s, in]     ┘
              SP: wait for the gather
              start all-reduce(grad_total), or under SP reduce-scatter    ┐ overlapped
              grad_W = grad_yᵀ total,  grad_b = Σ grad_y                  ┘
              wait; return grad_x ([b, s, in], or [b, s/tp, in] under SP)

The collectives are the same ones (same tensors, same order on every rank) as on the plain path,
plus under SP the backward's re-gather of x. The GEMMs are the ones ``F.linear``'s backward
runs, so the results agree (bit for bit in tests/parallel/overlap_checks.py, which also checks
the order of GEMMs, starts and waits).
On CUDA the overlap needs the communication kernel to be queued before the GEMM it hides
behind; Megatron sets CUDA_DEVICE_MAX_CONNECTIONS=1 for that (docs/performance.md).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from megasparse.parallel import collectives
from megasparse.parallel.collectives import Group


class _ColumnLinearOverlappedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, group, sequence_parallel):
        # x [b, s, in] (replicated over TP) or [b, s/tp, in] (SP); weight [out/tp, in]; bias [out/tp]
        total = collectives._all_gather(x, 1, group) if sequence_parallel else x  # [b, s, in]
        ctx.save_for_backward(x, weight)
        ctx.group, ctx.sequence_parallel, ctx.has_bias = group, sequence_parallel, bias is not None
        return F.linear(total, weight, bias)  # [b, s, out/tp]

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [b, s, out/tp]
        x, weight = ctx.saved_tensors
        group, sp = ctx.group, ctx.sequence_parallel
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gather = collectives.start_all_gather(x, 1, group) if sp and need_w else None
        grad_total = grad_out.matmul(weight) if need_x else None  # [b, s, in], hides the gather
        total = gather.wait() if gather is not None else x  # [b, s, in]
        pending = None
        if grad_total is not None:
            if sp:
                pending = collectives.start_reduce_scatter(grad_total, 1, ctx.group)  # -> [b, s/tp, in]
            else:
                pending = collectives.start_all_reduce(grad_total, ctx.group)  # in place: our own buffer
        # Both GEMMs below run while the collective is in flight.
        grad_out_2d = grad_out.reshape(-1, grad_out.shape[-1])  # [b·s, out/tp]
        grad_weight = grad_out_2d.t().mm(total.reshape(-1, total.shape[-1])) if need_w else None  # [out/tp, in]
        grad_bias = grad_out_2d.sum(0) if ctx.has_bias and need_b else None  # [out/tp]
        grad_x = pending.wait() if pending is not None else None
        return grad_x, grad_weight, grad_bias, None, None


def column_linear_overlapped(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], group: Group, sequence_parallel: bool
) -> torch.Tensor:
    """``F.linear`` of a column-parallel layer, entering the TP region itself, with the backward's
    collectives overlapped (see module docstring): x [b, s, in] ([b, s/tp, in] under SP) ->
    [b, s, out/tp]. ``weight`` may be several layers' weights concatenated (fused projections)."""
    return _ColumnLinearOverlappedBackward.apply(x, weight, bias, group, sequence_parallel)

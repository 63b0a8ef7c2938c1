"""Autograd-correct collectives for tensor and sequence parallelism (docs/design.md §5).

Each function is the forward of a pair whose backward is its adjoint, so gradients come out
right without any hook in the training loop:

    copy_to_tensor_parallel_region        fwd identity              bwd all-reduce
    reduce_from_tensor_parallel_region    fwd all-reduce            bwd identity
    gather_from_tensor_parallel_region    fwd all-gather last dim   bwd keep own slice
    scatter_to_tensor_parallel_region     fwd keep own slice        bwd all-gather last dim
    gather_from_sequence_parallel_region  fwd all-gather seq dim    bwd reduce-scatter seq dim
    reduce_scatter_to_sequence_parallel_region
                                          fwd reduce-scatter seq    bwd all-gather seq dim
    scatter_to_sequence_parallel_region   fwd keep own seq slice    bwd all-gather seq dim

The model's activations are batch-first, [b, s, d], so the sequence dimension defaults to 1.

``group`` is the tensor-parallel process group; ``None`` (or a group of one rank, or no
initialised torch.distributed) means "no tensor parallelism" and every function is the identity.
Note that this differs from torch.distributed, where ``group=None`` means the whole world.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

Group = Optional[dist.ProcessGroup]

# torch 2.13 renamed the single-tensor collectives; older versions only have the old names.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def group_size(group: Group) -> int:
    """Ranks in ``group``; 1 for ``None`` or when torch.distributed is not initialised."""
    if group is None or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def group_rank(group: Group) -> int:
    """This process's rank inside ``group``; 0 for ``None`` or no torch.distributed."""
    if group is None or not dist.is_initialized():
        return 0
    return dist.get_rank(group)


# ------------------------------------------------------------------------------ raw operations
def _all_reduce(x: torch.Tensor, group: Group) -> torch.Tensor:
    # A fresh buffer: the input may still be referenced elsewhere in the autograd graph.
    out = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, group=group)
    return out


def _all_gather(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """[.., n, ..] on each of tp ranks -> [.., tp·n, ..] in rank order along ``dim``."""
    tp = group_size(group)
    front = x.movedim(dim, 0).contiguous()  # [n, ...]: the collective concatenates on dim 0
    out = torch.empty((tp * front.shape[0],) + tuple(front.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_single(out, front, group=group)
    return out.movedim(0, dim)


def _reduce_scatter(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    """[.., tp·n, ..] partial sums -> [.., n, ..]: this rank's slice of the sum over ranks."""
    tp = group_size(group)
    front = x.movedim(dim, 0).contiguous()  # [tp·n, ...]
    if front.shape[0] % tp:
        raise ValueError(f"dimension {dim} of size {front.shape[0]} is not divisible by TP={tp}")
    out = torch.empty((front.shape[0] // tp,) + tuple(front.shape[1:]), dtype=x.dtype, device=x.device)
    _reduce_scatter_single(out, front, group=group)
    return out.movedim(0, dim)


class PendingCollective:
    """A collective started with ``async_op=True``; :meth:`wait` gives its result.

    The caller computes something else between the start and ``wait`` (the point of starting it
    early); on CUDA the collective runs on the communicator's stream meanwhile. ``result`` is a
    function of the finished buffer (e.g. moving the gathered dimension back into place).
    """

    def __init__(self, work, buffer: torch.Tensor, result):
        self._work, self._buffer, self._result = work, buffer, result

    def wait(self) -> torch.Tensor:
        self._work.wait()
        return self._result(self._buffer)


def start_all_reduce(x: torch.Tensor, group: Group) -> PendingCollective:
    """Sums ``x`` over ``group`` IN PLACE, asynchronously: pass a tensor nobody else reads."""
    # Looked up on the module at call time, so benchmarks/collectives_per_layer.py counts it.
    work = dist.all_reduce(x, group=group, async_op=True)
    return PendingCollective(work, x, lambda out: out)


def start_all_gather(x: torch.Tensor, dim: int, group: Group) -> PendingCollective:
    """Asynchronous :func:`_all_gather`: [.., n, ..] -> [.., tp·n, ..] along ``dim`` on ``wait``."""
    tp = group_size(group)
    front = x.movedim(dim, 0).contiguous()  # [n, ...]
    out = torch.empty((tp * front.shape[0],) + tuple(front.shape[1:]), dtype=x.dtype, device=x.device)
    work = _all_gather_single(out, front, group=group, async_op=True)
    # ``front`` must outlive the collective: keep it referenced until ``wait``.
    return PendingCollective(work, out, lambda buf, _keep=front: buf.movedim(0, dim))


def start_reduce_scatter(x: torch.Tensor, dim: int, group: Group) -> PendingCollective:
    """Asynchronous :func:`_reduce_scatter`: [.., tp·n, ..] partial sums -> [.., n, ..] on ``wait``."""
    tp = group_size(group)
    front = x.movedim(dim, 0).contiguous()  # [tp·n, ...]
    if front.shape[0] % tp:
        raise ValueError(f"dimension {dim} of size {front.shape[0]} is not divisible by TP={tp}")
    out = torch.empty((front.shape[0] // tp,) + tuple(front.shape[1:]), dtype=x.dtype, device=x.device)
    work = _reduce_scatter_single(out, front, group=group, async_op=True)
    # ``front`` must outlive the collective: keep it referenced until ``wait``.
    return PendingCollective(work, out, lambda buf, _keep=front: buf.movedim(0, dim))


def _own_slice(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    tp = group_size(group)
    if x.shape[dim] % tp:
        raise ValueError(f"dimension {dim} of size {x.shape[dim]} is not divisible by TP={tp}")
    return x.chunk(tp, dim=dim)[group_rank(group)].contiguous()


# ------------------------------------------------------------------------------ autograd pairs
class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_gather(x, -1, group)

    @staticmethod
    def backward(ctx, grad):
        return _own_slice(grad, -1, ctx.group), None


class _ScatterLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _own_slice(x, -1, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, -1, ctx.group), None


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        # Every rank used the whole gathered sequence; each position's gradient is the sum of
        # the ranks' contributions, and only the owner of that position needs it.
        return _reduce_scatter(grad, ctx.dim, ctx.group), None, None


class _ReduceScatterSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.dim, ctx.group), None, None


class _ScatterSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return _own_slice(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.dim, ctx.group), None, None


# ------------------------------------------------------------------------------ public API
def copy_to_tensor_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Enters a TP region with a replicated input: identity forward, gradient summed over TP."""
    return x if group_size(group) == 1 else _CopyToRegion.apply(x, group)


def reduce_from_tensor_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Leaves a TP region: partial results summed over TP ranks; gradient passed through."""
    return x if group_size(group) == 1 else _ReduceFromRegion.apply(x, group)


def gather_from_tensor_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """[.., n/tp] -> [.., n] (rank order); backward keeps this rank's slice of the gradient."""
    return x if group_size(group) == 1 else _GatherLastDim.apply(x, group)


def scatter_to_tensor_parallel_region(x: torch.Tensor, group: Group) -> torch.Tensor:
    """[.., n] -> this rank's [.., n/tp]; backward gathers the gradient slices."""
    return x if group_size(group) == 1 else _ScatterLastDim.apply(x, group)


def gather_from_sequence_parallel_region(x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
    """[b, s/tp, d] -> [b, s, d]; backward reduce-scatters the gradient back to [b, s/tp, d]."""
    return x if group_size(group) == 1 else _GatherSequence.apply(x, group, dim)


def reduce_scatter_to_sequence_parallel_region(x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
    """Partial sums [b, s, d] -> this rank's slice of their sum [b, s/tp, d]; backward gathers."""
    return x if group_size(group) == 1 else _ReduceScatterSequence.apply(x, group, dim)


def scatter_to_sequence_parallel_region(x: torch.Tensor, group: Group, dim: int = 1) -> torch.Tensor:
    """A replicated [b, s, d] -> this rank's [b, s/tp, d]; backward gathers the gradient."""
    return x if group_size(group) == 1 else _ScatterSequence.apply(x, group, dim)

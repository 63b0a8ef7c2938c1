"""Megatron-style tensor-parallel layers and the layer factory that puts them in the model.

Placement (docs/design.md §5): q/k/v, gate and up are column-parallel (output features split, no
communication in forward); attention output and down are row-parallel (input features split,
one all-reduce — or reduce-scatter under sequence parallelism — in forward); the embedding is
split over the vocabulary, and the tied head multiplies by the same shard, giving logits sharded
over the vocabulary for the vocab-parallel cross-entropy.

Sequence parallelism keeps the residual stream (norms, residual adds) split along the sequence,
[b, s/tp, d]: a column-parallel layer all-gathers the sequence before its matmul, a row-parallel
layer reduce-scatters after it, the embedding reduce-scatters its lookup. Norm weights then see
only s/tp positions per rank, so their gradient is summed over the TP group (autograd does it).

With ``comm_overlap`` (``train.tp_comm_overlap``) a column-parallel layer and the tied head run
their linear through megasparse/parallel/overlapped_linear.py instead: the same collectives, but
the backward's all-reduce / reduce-scatter of the input gradient runs while the weight gradient is
computed, and under SP only the local input is kept for the backward (re-gathered there).

Every sharded weight is initialised by drawing the FULL tensor with the model's rule and keeping
this rank's slice (``TensorPartition``, see megasparse/model/init.py): the same seed gives the
same full model for any TP size. Sharded weights also carry Megatron's attribute
``tensor_model_parallel = True``: DeepSpeed's gradient-norm code counts such parameters on every
TP rank and replicated ones (norms) on TP rank 0 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megasparse.model.layers import (
    PARAMETER_TAGS,
    PARTITION_ATTRIBUTE,
    LayerFactory,
    TensorPartition,
    apply_parameter_tags,
)
from megasparse.model.norm import RMSNorm
from megasparse.parallel.collectives import (
    Group,
    copy_to_tensor_parallel_region,
    gather_from_sequence_parallel_region,
    group_rank,
    group_size,
    reduce_from_tensor_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
)
from megasparse.parallel.overlapped_linear import column_linear_overlapped


def _add_sharded_weight(
    module: nn.Module, full_shape: tuple[int, ...], dim: int, group: Group, name: str = "weight"
) -> None:
    """Gives ``module`` an uninitialised parameter ``name``: this rank's slice of ``full_shape`` on ``dim``."""
    tp, rank = group_size(group), group_rank(group)
    if full_shape[dim] % tp:
        raise ValueError(f"dimension {dim} of {full_shape} is not divisible by TP={tp}")
    shape = list(full_shape)
    shape[dim] //= tp
    setattr(module, name, nn.Parameter(torch.empty(shape)))
    tags = {
        PARTITION_ATTRIBUTE: TensorPartition(dim, rank, tp, tuple(full_shape)),
        # Megatron's attribute names, read by DeepSpeed (grad norm, checkpoint tools).
        "tensor_model_parallel": True,
        "partition_dim": dim,
        "partition_stride": 1,
    }
    setattr(module, PARAMETER_TAGS, {**getattr(module, PARAMETER_TAGS, {}), name: tags})
    apply_parameter_tags(module)


def _enter_column_region(x: torch.Tensor, group: Group, sequence_parallel: bool) -> torch.Tensor:
    """Replicated [b, s, d] (or SP shard [b, s/tp, d]) -> [b, s, d] usable by a TP shard."""
    if sequence_parallel:
        return gather_from_sequence_parallel_region(x, group)
    return copy_to_tensor_parallel_region(x, group)


def _column_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    group: Group,
    sequence_parallel: bool,
    comm_overlap: bool,
) -> torch.Tensor:
    """[b, s, in] ([b, s/tp, in] under SP) -> [b, s, out/tp]: the column-parallel linear, either
    as separate collective + ``F.linear`` (plain) or as one function overlapping the backward's
    collectives with its GEMMs (``comm_overlap``)."""
    if comm_overlap and group_size(group) > 1:
        return column_linear_overlapped(x, weight, bias, group, sequence_parallel)
    return F.linear(_enter_column_region(x, group, sequence_parallel), weight, bias)


class ColumnParallelLinear(nn.Module):
    """``y = x Wᵀ`` with W [out, in] split along ``out``: each rank computes out/tp features.

    Input [b, s, in] replicated over TP ([b, s/tp, in] under sequence parallelism);
    output [b, s, out/tp] (never gathered: the next layer is row-parallel or the loss is).
    ``comm_overlap``: the backward overlaps its collectives with its GEMMs (module docstring).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        group: Group,
        sequence_parallel: bool = False,
        bias: bool = False,
        comm_overlap: bool = False,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group, self.sequence_parallel, self.comm_overlap = group, sequence_parallel, comm_overlap
        _add_sharded_weight(self, (out_features, in_features), 0, group)  # weight [out/tp, in]
        self.bias = None
        if bias:
            _add_sharded_weight(self, (out_features,), 0, group, name="bias")  # bias [out/tp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.column_linear(x, self.weight, self.bias)  # [b, s, out/tp]

    def column_linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """x [b, s, in] ([b, s/tp, in] under SP) @ weightᵀ (+ bias) -> [b, s, out'], entering the TP
        region on the way; ``weight`` may be several layers' concatenated (fused projections)."""
        return _column_linear(x, weight, bias, self.group, self.sequence_parallel, self.comm_overlap)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features} (local "
            f"{self.weight.shape[0]}), sequence_parallel={self.sequence_parallel}, comm_overlap={self.comm_overlap}"
        )


class RowParallelLinear(nn.Module):
    """``y = x Wᵀ`` with W [out, in] split along ``in``: each rank adds a partial sum.

    Input [b, s, in/tp] (the output of a column-parallel layer); output [b, s, out] summed over
    TP, or this rank's sequence slice [b, s/tp, out] of the sum under sequence parallelism.
    """

    def __init__(self, in_features: int, out_features: int, group: Group, sequence_parallel: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group, self.sequence_parallel = group, sequence_parallel
        _add_sharded_weight(self, (out_features, in_features), 1, group)  # weight [out, in/tp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partial = F.linear(x, self.weight)  # [b, s, out], this rank's share of the sum
        if self.sequence_parallel:
            return reduce_scatter_to_sequence_parallel_region(partial, self.group)  # [b, s/tp, out]
        return reduce_from_tensor_parallel_region(partial, self.group)  # [b, s, out]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features} (local {self.weight.shape[1]}), "
            f"out_features={self.out_features}, sequence_parallel={self.sequence_parallel}"
        )


class VocabParallelEmbedding(nn.Module):
    """Token table [V, d] split along the vocabulary: rank r holds rows [r·V/tp, (r+1)·V/tp).

    Each rank looks up the tokens it owns (zeros elsewhere) and the ranks' results are summed:
    tokens [b, s] -> [b, s, d], or [b, s/tp, d] under sequence parallelism.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, group: Group, sequence_parallel: bool = False):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.group, self.sequence_parallel = group, sequence_parallel
        _add_sharded_weight(self, (num_embeddings, embedding_dim), 0, group)  # weight [V/tp, d]
        self.vocab_start = group_rank(group) * self.weight.shape[0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = tokens - self.vocab_start  # [b, s]
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)  # [b, s, d]
        out = out.masked_fill(outside[..., None], 0.0)
        if self.sequence_parallel:
            return reduce_scatter_to_sequence_parallel_region(out, self.group)  # [b, s/tp, d]
        return reduce_from_tensor_parallel_region(out, self.group)  # [b, s, d]

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim} (local rows {self.vocab_start}.."
            f"{self.vocab_start + self.weight.shape[0]}), sequence_parallel={self.sequence_parallel}"
        )


class SequenceParallelRMSNorm(RMSNorm):
    """RMSNorm over a sequence shard [b, s/tp, d]; its weight gradient is summed over TP ranks.

    Each rank's weight gradient covers only its s/tp positions. Routing the (replicated) weight
    through ``copy_to_tensor_parallel_region`` makes autograd all-reduce that gradient, so every
    TP rank holds the full, identical gradient and nothing in the training loop has to know.
    """

    def __init__(self, size: int, eps: float, group: Group):
        super().__init__(size, eps)
        self.group = group
        # Megatron's marker, for tools that look for it (the gradient is already summed).
        setattr(self, PARAMETER_TAGS, {"weight": {"sequence_parallel": True}})
        apply_parameter_tags(self)

    def norm_weight(self) -> torch.Tensor:
        """The weight through ``copy_to_tensor_parallel_region``: its gradient is all-reduced. The
        norm itself ([b, s/tp, d] -> [b, s/tp, d]) is the plain ``norm_fn``, compiled or not; the
        collective stays outside it."""
        return copy_to_tensor_parallel_region(self.weight, self.group)


@dataclass(frozen=True, eq=False)
class TensorParallelLayerFactory(LayerFactory):
    """A :class:`LayerFactory` whose layers are split over ``group`` (see module docstring)."""

    group: Group = None
    sequence_parallel: bool = False
    comm_overlap: bool = False  # train.tp_comm_overlap: column layers and the tied head

    @property
    def tensor_parallel_size(self) -> int:
        return group_size(self.group)

    def column(self, in_features: int, out_features: int, bias: bool = False) -> nn.Module:
        return ColumnParallelLinear(
            in_features, out_features, self.group, self.sequence_parallel, bias=bias, comm_overlap=self.comm_overlap
        )

    def row(self, in_features: int, out_features: int) -> nn.Module:
        return RowParallelLinear(in_features, out_features, self.group, self.sequence_parallel)

    def embedding(self, vocab_size: int, hidden_size: int) -> nn.Module:
        return VocabParallelEmbedding(vocab_size, hidden_size, self.group, self.sequence_parallel)

    def head(self, hidden_size: int, vocab_size: int) -> nn.Module:
        # An untied head is a column-parallel layer over the vocabulary: logits [b, s, V/tp].
        return ColumnParallelLinear(
            hidden_size, vocab_size, self.group, self.sequence_parallel, comm_overlap=self.comm_overlap
        )

    def norm(self, size: int, eps: float) -> RMSNorm:
        if self.sequence_parallel and self.tensor_parallel_size > 1:
            return SequenceParallelRMSNorm(size, eps, self.group)
        return RMSNorm(size, eps)

    def tied_head(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """hidden [b, s, d] ([b, s/tp, d] under SP) @ embedding shard [V/tp, d]ᵀ -> [b, s, V/tp]."""
        return _column_linear(hidden, weight, None, self.group, self.sequence_parallel, self.comm_overlap)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """[b, s, d] ([b, s/tp, d] under SP) -> the whole [b, s, d] on every TP rank; backward sums
        the ranks' partial gradients (all-reduce, or reduce-scatter under SP)."""
        return _enter_column_region(hidden, self.group, self.sequence_parallel)


def tensor_parallel_layer_factory(
    groups_or_group, sequence_parallel: bool = False, comm_overlap: bool = False
) -> LayerFactory:
    """The layer factory for a model split over the tensor-parallel group.

    ``groups_or_group``: a :class:`megasparse.parallel.groups.ParallelGroups` (its TP group is
    used) or a TP process group directly. With one TP rank this returns the plain local factory
    (sequence parallelism over one rank is a no-op), so TP=1 runs build exactly today's model.
    ``comm_overlap`` (``train.tp_comm_overlap``): column layers overlap their backward's
    collectives with their GEMMs (megasparse/parallel/overlapped_linear.py).
    """
    group = getattr(groups_or_group, "tp_group", groups_or_group)
    if group_size(group) == 1:
        from megasparse.model.layers import LOCAL_LAYERS

        return LOCAL_LAYERS
    return TensorParallelLayerFactory(group=group, sequence_parallel=sequence_parallel, comm_overlap=comm_overlap)

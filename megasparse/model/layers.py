"""The one place where the model's weight-carrying layers are constructed.

Every projection is built through a :class:`LayerFactory`: ``column`` for layers whose output
dimension may later be split across tensor-parallel ranks (q/k/v, gate, up), ``row`` for those
whose input dimension may be split (attention output, down), and ``embedding`` for the token
table. The default factory builds plain local layers. A tensor-parallel factory can return
column/row-parallel layers instead without touching the model code (docs/design.md §5).

Two more hooks exist for tensor/sequence parallelism: ``norm`` (under sequence parallelism a
norm sees only part of the sequence, so its weight gradient must be summed over the TP ranks)
and ``tied_head`` (the tied output head multiplies by this rank's embedding shard, which needs
the full hidden state on every TP rank).

A layer may declare attributes for its parameters in a module attribute ``parameter_tags``
(``{param_name: {attribute: value}}``). They live on the module because the model is built on the
meta device and materialised with ``to_empty``, which replaces the parameter objects (and drops
their attributes); :func:`apply_parameter_tags` copies them onto the parameters and runs at the
start of initialisation. A tensor-parallel layer tags each sharded parameter with a
:class:`TensorPartition` under ``PARTITION_ATTRIBUTE``; initialisation then draws the *full*
tensor and keeps the slice, so the same seed gives the same full model for any TP size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from megasparse.model.norm import RMSNorm

PARTITION_ATTRIBUTE = "tensor_partition"
PARAMETER_TAGS = "parameter_tags"


@dataclass(frozen=True)
class TensorPartition:
    """This rank's equal slice ``rank`` of ``size`` along ``dim`` of a tensor of ``full_shape``."""

    dim: int
    rank: int
    size: int
    full_shape: tuple[int, ...]

    def take(self, full: torch.Tensor) -> torch.Tensor:
        """The slice of ``full`` (shape ``full_shape``) that this rank holds."""
        return full.chunk(self.size, dim=self.dim)[self.rank]


@dataclass(frozen=True)
class LayerFactory:
    """Builds the model's linear and embedding layers (no biases, as in the paper, except q/k/v
    biases of imported models: ``column(..., bias=True)``)."""

    @property
    def tensor_parallel_size(self) -> int:
        """How many ranks share each layer (the vocabulary is padded to a multiple of it)."""
        return 1

    def column(self, in_features: int, out_features: int, bias: bool = False) -> nn.Module:
        """A projection whose output features (and bias) may be sharded (q, k, v, gate, up)."""
        return nn.Linear(in_features, out_features, bias=bias)

    def row(self, in_features: int, out_features: int) -> nn.Module:
        """A projection whose input features may be sharded (attention output, down)."""
        return nn.Linear(in_features, out_features, bias=False)

    def embedding(self, vocab_size: int, hidden_size: int) -> nn.Module:
        """The token embedding; when tied, its weight is also the output head."""
        return nn.Embedding(vocab_size, hidden_size)

    def head(self, hidden_size: int, vocab_size: int) -> nn.Module:
        """The untied output head (only when ``tie_embeddings`` is false)."""
        return nn.Linear(hidden_size, vocab_size, bias=False)

    def norm(self, size: int, eps: float) -> RMSNorm:
        """An RMSNorm over the hidden dimension (blocks and the final norm)."""
        return RMSNorm(size, eps)

    def tied_head(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Logits of the tied head: hidden [b, s, d] @ weightᵀ ([V, d]) -> [b, s, V]."""
        return F.linear(self.head_input(hidden), weight)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final hidden state as the output head needs it on this rank: [b, s, d] (here as is;
        a tensor-parallel factory gathers the sequence shards, and its backward sums the ranks'
        partial gradients)."""
        return hidden


LOCAL_LAYERS = LayerFactory()


def apply_parameter_tags(model: nn.Module) -> None:
    """Sets every module's declared ``parameter_tags`` as attributes of its parameters."""
    for module in model.modules():
        for param_name, attributes in getattr(module, PARAMETER_TAGS, {}).items():
            param = getattr(module, param_name)
            for key, value in attributes.items():
                setattr(param, key, value)


def has_hooks(module: nn.Module) -> bool:
    """True if anything hooks ``module``'s forward (measurement probes, ZeRO-3's parameter
    gathering): a fused path that bypasses the module's own forward must then step aside."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def fused_column_linear(x: torch.Tensor, layers: tuple[nn.Module, ...]) -> torch.Tensor:
    """Several column projections of one input as one GEMM: x [.., d] -> [.., Σ out_i].

    The weights are concatenated per call ([Σ out_i, d]: far smaller than the activations, so
    the copy is cheap) and the parameters stay separate, with their names, shapes and
    tensor-parallel slices. A tensor-parallel layer's ``column_linear`` enters the TP region (all-
    gather of the sequence, or the identity whose backward all-reduces) once for all of them, and
    with ``comm_overlap`` overlaps that backward collective with the weight-gradient GEMM.
    """
    biases = [getattr(layer, "bias", None) for layer in layers]
    bias = None if all(b is None for b in biases) else torch.cat(biases)  # all or none (q/k/v alike)
    weight = torch.cat([layer.weight for layer in layers])  # [Σ out_i, d]
    column_linear = getattr(layers[0], "column_linear", None)
    if column_linear is not None:
        return column_linear(x, weight, bias)
    return F.linear(x, weight, bias)

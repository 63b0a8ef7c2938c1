"""Parallelism: process groups, TP/SP layers and collectives, vocab-parallel cross-entropy.

Typical use (every rank, after torch.distributed is initialised)::

    groups = ParallelGroups.from_config(cfg)                        # validates, builds TP/PP/DP groups
    factory = tensor_parallel_layer_factory(groups, cfg.parallel.sequence_parallel)
    model = Transformer(cfg.model, seed=cfg.train.seed, device=device, layer_factory=factory)
    logits = model(tokens)                                          # [b, s, V/tp]
    loss = vocab_parallel_cross_entropy(logits, labels, groups.tp_group).mean()
    deepspeed.initialize(..., mpu=groups.mpu())
"""

from megasparse.parallel.collectives import (
    copy_to_tensor_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_from_tensor_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
    scatter_to_tensor_parallel_region,
)
from megasparse.parallel.cross_entropy import vocab_parallel_cross_entropy
from megasparse.parallel.groups import DeepSpeedMPU, ParallelGroups, ParallelLayout
from megasparse.parallel.tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    SequenceParallelRMSNorm,
    TensorParallelLayerFactory,
    VocabParallelEmbedding,
    tensor_parallel_layer_factory,
)

__all__ = [
    "ColumnParallelLinear",
    "DeepSpeedMPU",
    "ParallelGroups",
    "ParallelLayout",
    "RowParallelLinear",
    "SequenceParallelRMSNorm",
    "TensorParallelLayerFactory",
    "VocabParallelEmbedding",
    "copy_to_tensor_parallel_region",
    "gather_from_sequence_parallel_region",
    "gather_from_tensor_parallel_region",
    "reduce_from_tensor_parallel_region",
    "reduce_scatter_to_sequence_parallel_region",
    "scatter_to_sequence_parallel_region",
    "scatter_to_tensor_parallel_region",
    "tensor_parallel_layer_factory",
    "vocab_parallel_cross_entropy",
]

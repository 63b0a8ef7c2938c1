"""How a TP × PP layout splits the plain model: partition dims, pipeline pieces, file names.

Where DeepSpeed puts the weights (checked on deepspeed 0.19; ``XX`` = TP rank, two digits):

    TP ≥ 1, PP = 1   mp_rank_XX_model_states.pt, key ``module``: the whole (sharded) model with
                     plain names prefixed ``model.`` (the state dict of ``CausalLMLoss``)
    PP > 1           layer_NN-model_XX-model_states.pt: the state dict of pipeline piece NN,
                     with names relative to the piece (order in pipeline_model.py):
                     0 = embedding (``embed.weight``, written by stage 0 only: the last stage's
                     tied copy is the same tensor), 1..L = block NN-1, L+1 = final norm (and
                     the untied ``lm_head.weight``); the tied head piece holds no state
    ZeRO-3           the module weights are partitioned over data-parallel ranks (their fp32
                     masters are read from the optimizer files: source_state.py)

Tensor-parallel shards are joined (source_state.py) along the dimension the TP layers split
them on, read from the real layers (``partition_dim`` tags of megasparse/parallel/tensor_parallel.py)
so this file holds no list of names; parameters without the tag (norms) are replicated.
"""

from __future__ import annotations

import re

from megasparse.checkpoint.engine import CheckpointError
from megasparse.config import ModelConfig
from megasparse.model.layers import PARAMETER_TAGS

MODULE_PREFIX = "model."
LAYER_FILE = re.compile(r"^layer_(\d+)(?:-model_(\d+))?-model_states\.pt$")


def model_states_file(tp_rank: int) -> str:
    return f"mp_rank_{tp_rank:02d}_model_states.pt"


def partition_dims(config: ModelConfig) -> dict[str, int]:
    """Plain parameter name -> the dimension tensor parallelism splits it along (absent = replicated).

    Builds the model with the tensor-parallel layer factory on the meta device (no process group:
    shapes stay full, but every sharded layer declares its ``partition_dim``).
    """
    from megasparse.model.transformer import Transformer
    from megasparse.parallel.tensor_parallel import TensorParallelLayerFactory

    model = Transformer(config, device="meta", eod_token_id=0, layer_factory=TensorParallelLayerFactory())
    dims = {}
    for module_name, module in model.named_modules():
        for param_name, tags in getattr(module, PARAMETER_TAGS, {}).items():
            if "partition_dim" in tags:
                dims[f"{module_name}.{param_name}" if module_name else param_name] = int(tags["partition_dim"])
    return dims


def pipeline_piece_prefix(index: int, num_layers: int) -> str:
    """The plain-model prefix of pipeline piece ``index`` (see the table in the module docstring)."""
    if 1 <= index <= num_layers:
        return f"layers.{index - 1}."
    if index in (0, num_layers + 1):
        return ""
    raise CheckpointError(
        f"pipeline piece {index} holds weights, but a {num_layers}-layer model has pieces "
        f"0..{num_layers + 1} only; the checkpoint does not match its model config"
    )

"""Reassemble the plain model's weights from a checkpoint saved in any TP × PP layout.

Where DeepSpeed puts the weights (checked on deepspeed 0.19; ``XX`` = TP rank, two digits):

    TP ≥ 1, PP = 1   mp_rank_XX_model_states.pt, key ``module``: the whole (sharded) model with
                     plain names prefixed ``model.`` (the state dict of ``CausalLMLoss``)
    PP > 1           layer_NN-model_XX-model_states.pt: the state dict of pipeline piece NN,
                     with names relative to the piece (order in pipeline_model.py):
                     0 = embedding (``embed.weight``, written by stage 0 only: the last stage's
                     tied copy is the same tensor), 1..L = block NN-1, L+1 = final norm (and
                     the untied ``lm_head.weight``); the tied head piece holds no state
    ZeRO-3           the module weights are partitioned over data-parallel ranks: refused,
                     pointing at DeepSpeed's zero_to_fp32.py

Tensor-parallel shards are joined along the dimension the TP layers split them on, read from
the real layers (``partition_dim`` tags of megasparse/parallel/tensor_parallel.py) so this file
holds no list of names; parameters without the tag (norms) are replicated and taken from TP
rank 0. The padded vocabulary of a TP run (a multiple of 128·TP) is kept as trained.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from megasparse.checkpoint.engine import CheckpointError
from megasparse.config import ModelConfig
from megasparse.model.layers import PARAMETER_TAGS

MODULE_PREFIX = "model."
LAYER_FILE = re.compile(r"^layer_(\d+)(?:-model_(\d+))?-model_states\.pt$")


def _zero3_error(folder: Path) -> CheckpointError:
    # DeepSpeed's own consolidation unpickles the optimizer files with arbitrary code allowed
    # (they are not weights_only-loadable), so this reader leaves it to the user, explicitly.
    return CheckpointError(
        f"{folder}: saved with ZeRO-3, whose module weights are partitioned over data-parallel ranks "
        f"and cannot be read here; consolidate them with the zero_to_fp32.py script DeepSpeed wrote beside "
        f"it (python {folder.parent / 'zero_to_fp32.py'} {folder.parent} OUT_DIR --tag {folder.name}), "
        "or train with zero_stage 0-2 to get directly readable checkpoints"
    )


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


def load_tensors(path: Path) -> Any:
    """``torch.load`` with the safe unpickler: DeepSpeed's model-state and layer files hold only
    tensors, plain containers and strings (checked on deepspeed 0.19), so no code runs on load."""
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete or was not written by this layout")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: cannot be read safely ({str(e).splitlines()[0][:200]})") from None


def _module_shard(folder: Path, tp_rank: int) -> dict[str, torch.Tensor]:
    path = folder / model_states_file(tp_rank)
    states = load_tensors(path)
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict):
        raise CheckpointError(f"{path}: no 'module' state dict inside")
    return {k[len(MODULE_PREFIX) :] if k.startswith(MODULE_PREFIX) else k: v for k, v in module.items()}


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


def _pipeline_shards(folder: Path, num_layers: int, tp: int) -> dict[int, dict[str, torch.Tensor]]:
    shards: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for path in sorted(folder.iterdir()):
        m = LAYER_FILE.match(path.name)
        if not m:
            continue
        piece, tp_rank = int(m.group(1)), int(m.group(2) or 0)
        if tp_rank >= tp:
            raise CheckpointError(f"{path}: TP rank {tp_rank}, but the metadata says tensor={tp}")
        prefix = pipeline_piece_prefix(piece, num_layers)
        state = load_tensors(path)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a state dict")
        shards[tp_rank].update({prefix + k: v for k, v in state.items()})
    if not shards:
        raise CheckpointError(f"{folder}: saved with pipeline parallelism but holds no layer_NN-*model_states.pt files")
    return shards


def consolidated_state_dict(folder: Path, meta: dict[str, Any], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The plain Transformer's state dict (vocabulary padded for the saved TP size), on the CPU."""
    layout = meta.get("layout", {})
    tp, pp = int(layout.get("tensor", 1)), int(layout.get("pipeline", 1))
    if int(layout.get("zero_stage", 0)) == 3:
        raise _zero3_error(folder)
    if pp > 1:
        shards = _pipeline_shards(folder, config.num_layers, tp)
    else:
        if not (folder / model_states_file(0)).exists() and any(folder.glob("zero_pp_rank_*_model_states.pt")):
            raise _zero3_error(folder)
        shards = {r: _module_shard(folder, r) for r in range(tp)}
    if tp == 1:
        return shards[0]
    missing = [r for r in range(tp) if r not in shards]
    if missing:
        raise CheckpointError(f"{folder}: no weights of TP rank(s) {missing}; the checkpoint is incomplete")
    dims = partition_dims(config)
    state = {}
    for name, first in shards[0].items():
        parts = [shards[r].get(name) for r in range(tp)]
        if any(p is None for p in parts):
            raise CheckpointError(f"{folder}: '{name}' is missing from some TP ranks; the checkpoint is incomplete")
        # [.., n/tp, ..] × tp -> [.., n, ..] in TP-rank order (rank r holds the r-th slice).
        state[name] = torch.cat(parts, dim=dims[name]) if name in dims else first
    return state

"""``checkpoint.init_from``: start a run from another checkpoint's weights (fresh optimizer and schedule).

The source is any checkpoint folder the reader reads — a run of ours in any TP × PP × DP layout,
or the weights-only checkpoint ``megasparse convert HF_DIR DST --to megasparse`` writes from a
Hugging Face model. Its model config becomes the run's (the run config may only repeat it, or
set ``attention_within_document``, which is behaviour, not weights). Each rank copies its own
slice of every full tensor: TP shards by the layers' partition tags, PP stages by the plain names
of their parameters. The vocabulary rows are fitted to this layout's padding (padding rows are
zero or dropped; real rows never are).

A run that finds a checkpoint of its own to resume ignores ``init_from``: it continues itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from megasparse.checkpoint import list_checkpoints, load_state_dict
from megasparse.checkpoint.engine import CheckpointError
from megasparse.config import ConfigError, ModelConfig
from megasparse.model.layers import PARTITION_ATTRIBUTE

BEHAVIOUR_FIELDS = {"attention_within_document"}  # the run may choose these freely


def init_model_config(run_model: ModelConfig, path: str) -> tuple[ModelConfig, Any]:
    """(the model config to build, the checkpoint info); refuses a run config that contradicts it."""
    try:
        info = list_checkpoints(path)[-1]
    except CheckpointError as e:
        raise ConfigError(f"checkpoint.init_from: {e}") from None
    saved = info.model_config
    for field in sorted(run_model.model_fields_set - BEHAVIOUR_FIELDS):
        ours, theirs = getattr(run_model, field), getattr(saved, field)
        if ours != theirs:
            raise ConfigError(
                f"model.{field}={ours} in the run config, but checkpoint.init_from {info.path} has {theirs}; "
                f"remove model.{field} from the config (the checkpoint's model is used)"
            )
    behaviour = {f: getattr(run_model, f) for f in BEHAVIOUR_FIELDS & run_model.model_fields_set}
    return saved.model_copy(update=behaviour), info


def _fit_vocab_rows(full: torch.Tensor, rows: int, vocab_size: int, name: str) -> torch.Tensor:
    """[V_saved, d] -> [rows, d]: zero rows appended, or padding rows (≥ vocab_size) dropped."""
    if full.shape[0] == rows:
        return full
    if full.shape[0] < rows:
        return torch.cat([full, full.new_zeros(rows - full.shape[0], *full.shape[1:])])
    if rows < vocab_size:
        raise ConfigError(f"checkpoint.init_from: {name} has {full.shape[0]} rows, this layout only {rows}")
    return full[:rows]


@torch.no_grad()
def load_initial_weights(model: nn.Module, info: Any, plain_names: dict[str, str], vocab_size: int) -> int:
    """Copies this rank's part of the checkpoint's weights into ``model``; returns tensors copied.

    ``plain_names`` maps ``model``'s parameter names to the plain Transformer's.
    """
    state = load_state_dict(info)
    copied = 0
    for name, param in model.named_parameters():
        plain = plain_names[name]
        if plain not in state:
            raise ConfigError(f"checkpoint.init_from {info.path}: no tensor '{plain}'")
        partition = getattr(param, PARTITION_ATTRIBUTE, None)
        full_shape = tuple(partition.full_shape) if partition is not None else tuple(param.shape)
        full = state[plain]
        if plain in ("embed.weight", "lm_head.weight"):
            full = _fit_vocab_rows(full, full_shape[0], vocab_size, plain)
        if tuple(full.shape) != full_shape:
            raise ConfigError(
                f"checkpoint.init_from {info.path}: '{plain}' has shape {tuple(full.shape)}, the model {full_shape}"
            )
        param.copy_(full if partition is None else partition.take(full))
        copied += 1
    return copied

"""A weights-only checkpoint folder: what an import from Hugging Face writes.

It has the one-process layout the reader reads (engine.py, shards.py): ``megasparse_meta.json``
with the model config, ``layout`` TP = PP = DP = 1, ZeRO 0 and ``progress`` at step 0, and
``mp_rank_00_model_states.pt`` with the plain state dict under ``module`` (names prefixed
``model.``, as the training engine saves them). It holds no optimizer state: training starts
from it with ``checkpoint.init_from`` (fresh optimizer and schedule), in any layout, and
``measure`` reads it like any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import megasparse
from megasparse.checkpoint.engine import META_FILE
from megasparse.checkpoint.shards import MODULE_PREFIX, model_states_file
from megasparse.config import ModelConfig

WEIGHTS_ONLY_LAYOUT = {"tensor": 1, "pipeline": 1, "data": 1, "zero_stage": 0}


def write_weights_checkpoint(
    folder: Path, config: ModelConfig, state: dict[str, torch.Tensor], extra_meta: dict[str, Any]
) -> None:
    """Writes ``state`` (plain names, the padded vocabulary) and the metadata into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    module = {MODULE_PREFIX + name: tensor.contiguous() for name, tensor in state.items()}
    torch.save({"module": module}, folder / model_states_file(0))
    meta = {
        "version": megasparse.__version__,
        "step": 0,
        "model": config.model_dump(),
        "layout": dict(WEIGHTS_ONLY_LAYOUT),
        "weights_only": True,
        **extra_meta,
        "progress": {"step": 0, "consumed_tokens": 0},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")

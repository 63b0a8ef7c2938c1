"""A weights-only checkpoint folder: what an import from Hugging Face writes.

The layout-free format of layout_free.py without optimizer state: ``megasparse_meta.json``
(``"format": "layout-free"``, ``"weights_only": true``, the model config, the one-process
layout, progress at step 0), ``megasparse_layout.json`` and the plain-named weights as sharded
safetensors, written tensor by tensor. Training starts from it with ``checkpoint.init_from``
(fresh optimizer and schedule) in any layout; ``measure`` and every reader read it like any
checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import megasparse
from megasparse.checkpoint import integrity
from megasparse.checkpoint.engine import META_FILE
from megasparse.checkpoint.layout import LAYOUT_FILE, layout_record
from megasparse.checkpoint.layout_free import LAYOUT_FREE, WEIGHTS_PREFIX
from megasparse.checkpoint.safetensors_shards import DEFAULT_MAX_SHARD_BYTES, ShardedSafetensorsWriter
from megasparse.config import ModelConfig

WEIGHTS_ONLY_LAYOUT = {"world_size": 1, "tensor": 1, "pipeline": 1, "data": 1, "zero_stage": 0}


class WeightsCheckpointWriter:
    """``add(name, tensor)`` for every plain-named weight, then ``close(extra_meta)``."""

    def __init__(self, folder: Path, config: ModelConfig, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.folder, self.config = Path(folder), config
        self.folder.mkdir(parents=True, exist_ok=True)
        self.weights = ShardedSafetensorsWriter(self.folder, WEIGHTS_PREFIX, max_shard_bytes)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.weights.add(name, tensor)

    def close(self, extra_meta: dict[str, Any]) -> None:
        self.weights.close({"format": LAYOUT_FREE})
        record = layout_record(self.config, WEIGHTS_ONLY_LAYOUT, ranks=[])
        (self.folder / LAYOUT_FILE).write_text(json.dumps(record, indent=1))
        meta = {
            "version": megasparse.__version__,
            "step": 0,
            "format": LAYOUT_FREE,
            "weights_only": True,
            "model": self.config.model_dump(),
            "layout": dict(WEIGHTS_ONLY_LAYOUT),
            **extra_meta,
            "progress": {"step": 0, "consumed_tokens": 0},
        }
        (self.folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        integrity.seal(self.folder)  # the manifest last: without it no reader takes the folder


def write_weights_checkpoint(
    folder: Path, config: ModelConfig, state: dict[str, torch.Tensor], extra_meta: dict[str, Any]
) -> None:
    """Writes ``state`` (plain names, the padded vocabulary) and the metadata into ``folder``."""
    writer = WeightsCheckpointWriter(folder, config)
    for name, tensor in state.items():
        writer.add(name, tensor.detach())
    writer.close(extra_meta)

"""The layout-free checkpoint that ``megasparse convert --to megasparse`` writes.

A run directory like any other (``latest`` names the step folder), whose step folder holds
plain-named tensors instead of DeepSpeed's per-rank files::

    global_step{N}/
      megasparse_meta.json        "format": "layout-free", the target layout, progress, run config
      megasparse_layout.json      the target layout's record (layout.py; no per-rank entries)
      model*.safetensors (+ index)       fp32 master weights, vocabulary padded for the target TP
      optimizer*.safetensors (+ index)   exp_avg/<name>, exp_avg_sq/<name> (Adam's moments)
      megasparse_training.pt      Adam's step, LR scheduler, DeepSpeed counters, loader position,
                                  activation counters per global layer (all plain types)

The trainer loads it into an engine of the recorded layout (layout_free_resume.py); the reader
(source_state.py interface) serves it to ``load_model`` and to further conversions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from megasparse.checkpoint.engine import CheckpointError
from megasparse.checkpoint.layout import plain_layer_factory, read_layout_record
from megasparse.checkpoint.safetensors_shards import ShardedSafetensorsReader
from megasparse.checkpoint.shards import partition_dims

LAYOUT_FREE = "layout-free"
TRAINING_FILE = "megasparse_training.pt"
WEIGHTS_PREFIX = "model"
OPTIMIZER_PREFIX = "optimizer"
MOMENTS = ("exp_avg", "exp_avg_sq")


def is_layout_free(meta: dict[str, Any]) -> bool:
    return meta.get("format") == LAYOUT_FREE


def read_training_state(folder: Path) -> dict[str, Any]:
    path = Path(folder) / TRAINING_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the converted checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: cannot be read safely ({str(e).splitlines()[0][:200]})") from None


class LayoutFreeCheckpoint:
    """The same reading interface as :class:`~megasparse.checkpoint.source_state.SourceCheckpoint`."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        from megasparse.config import ModelConfig
        from megasparse.model.transformer import Transformer

        self.folder, self.meta = Path(folder), meta
        self.config = ModelConfig.model_validate(meta["model"])
        layout = meta.get("layout", {})
        self.tp, self.pp = int(layout.get("tensor", 1)), int(layout.get("pipeline", 1))
        self.dp, self.zero_stage = int(layout.get("data", 1)), int(layout.get("zero_stage", 0))
        self.record = read_layout_record(self.folder)
        self.split_dims = partition_dims(self.config)
        model = Transformer(self.config, device="meta", eod_token_id=0, layer_factory=plain_layer_factory(self.tp))
        self.shapes = {name: p.shape for name, p in model.named_parameters()}
        self.weights = ShardedSafetensorsReader(self.folder, WEIGHTS_PREFIX)
        index = self.folder / f"{OPTIMIZER_PREFIX}.safetensors.index.json"
        self.optimizer = ShardedSafetensorsReader(self.folder, OPTIMIZER_PREFIX) if index.exists() else None
        self._training: Optional[dict[str, Any]] = None
        unknown = [n for n in self.weights.names() if n not in self.shapes]
        if unknown:
            raise CheckpointError(
                f"{self.weights.index_path}: tensor '{unknown[0]}' is not a parameter of the saved model config; "
                "the weights and megasparse_meta.json do not belong together"
            )

    def parameter_names(self) -> list[str]:
        return list(self.shapes)

    @property
    def has_optimizer_state(self) -> bool:
        return self.optimizer is not None

    @property
    def training(self) -> dict[str, Any]:
        if self._training is None:
            self._training = read_training_state(self.folder)
        return self._training

    def tensor(self, name: str, kind: str = "fp32") -> torch.Tensor:
        if kind in ("fp32", "module"):
            if name not in self.weights:
                raise CheckpointError(f"{self.weights.index_path}: '{name}' missing; the checkpoint is incomplete")
            full = self.weights.get(name)
        elif kind in MOMENTS and self.optimizer is not None:
            full = self.optimizer.get(f"{kind}/{name}")
        else:
            raise CheckpointError(f"{self.folder}: holds no optimizer state ('{kind}' of '{name}' asked for)")
        if full.shape != self.shapes[name]:
            raise CheckpointError(
                f"{self.folder}: '{name}' has shape {tuple(full.shape)}, the saved model config needs "
                f"{tuple(self.shapes[name])}; the checkpoint and its layout do not match"
            )
        return full

    def optimizer_step(self) -> Optional[int]:
        step = self.training.get("optimizer_step")
        return None if step is None else int(step)


def open_checkpoint(folder: Path, meta: dict[str, Any]):
    """A per-tensor reader for any of our checkpoints: DeepSpeed's files or layout-free."""
    if is_layout_free(meta):
        return LayoutFreeCheckpoint(folder, meta)
    from megasparse.checkpoint.source_state import SourceCheckpoint

    return SourceCheckpoint(folder, meta)

"""Read model weights out of our checkpoints, without DeepSpeed or an engine (layout: engine.py).

``list_checkpoints(path)`` accepts one checkpoint folder (``.../global_stepN`` with
``megasparse_meta.json``) or a checkpoint directory holding several; it returns them in step
order with the tokens consumed at each (from the meta's ``progress``).
``load_model(info)`` builds a plain :class:`Transformer` from the saved model config and loads
the weights, whatever TP × PP layout (and ZeRO stage 0–2) saved them: tensor-parallel shards are
joined and pipeline pieces renamed by shards.py. ZeRO-3 checkpoints are refused with
a pointer to DeepSpeed's ``zero_to_fp32.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from megasparse.checkpoint.engine import META_FILE, TAG_PATTERN, CheckpointError
from megasparse.checkpoint.manifest import MANIFEST_FILE, check_files, has_manifest, read_manifest, verify_folder
from megasparse.checkpoint.shards import consolidated_state_dict, model_states_file
from megasparse.config import ModelConfig
from megasparse.model.layers import LOCAL_LAYERS, LayerFactory
from megasparse.model.transformer import Transformer

MODEL_STATES_FILE = model_states_file(0)


@dataclass
class CheckpointInfo:
    """One complete checkpoint folder and what its metadata says about it."""

    path: Path
    step: int
    tokens: int  # consumed tokens at this checkpoint (raw count)
    meta: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.model_validate(self.meta["model"])


def read_checkpoint_info(folder: Union[str, Path]) -> CheckpointInfo:
    """The metadata of one complete folder; a folder without a valid manifest, or whose files do
    not have the recorded sizes, is refused as incomplete (checksums are checked at loading)."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if folder.is_dir():
        problem = verify_folder(folder, checksums=False)
        if problem:
            raise CheckpointError(f"{problem}; the checkpoint {folder} is incomplete")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a megasparse checkpoint ({META_FILE} missing)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for key in ("model", "progress"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: field '{key}' missing; the checkpoint was not written by megasparse")
    progress = meta["progress"]
    step = int(progress.get("step", meta.get("step", 0)))
    return CheckpointInfo(path=folder, step=step, tokens=int(progress.get("consumed_tokens", 0)), meta=meta)


def list_checkpoints(path: Union[str, Path]) -> list[CheckpointInfo]:
    """One checkpoint folder, or every complete ``global_stepN`` under a directory, by step."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / META_FILE).exists() or has_manifest(path):
        return [read_checkpoint_info(path)]
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; give a checkpoint folder or a run's checkpoint directory")
    # Only folders with a manifest are complete (an interrupted save or prune has none).
    folders = [c for c in path.iterdir() if TAG_PATTERN.match(c.name) and has_manifest(c)]
    for sub in ("checkpoints", "ckpt"):  # a run folder whose checkpoints live one level down
        if not folders and (path / sub).is_dir():
            return list_checkpoints(path / sub)
    if not folders:
        raise CheckpointError(f"{path}: no complete checkpoints (global_stepN folders with {MANIFEST_FILE}) found")
    return sorted((read_checkpoint_info(f) for f in folders), key=lambda c: c.step)


def verify_model_files(folder: Path) -> Optional[str]:
    """Checksums of the weight files (the ones loading reads) against the manifest: None when good."""
    try:
        files = read_manifest(folder)
    except ValueError as e:
        return str(e)
    return check_files(folder, {n: f for n, f in files.items() if "model_states" in n})


@dataclass(frozen=True)
class _LocalLayersPaddedForTP(LayerFactory):
    """Plain local layers, with the vocabulary padded as the saved TP size padded it."""

    saved_tensor_parallel: int = 1

    @property
    def tensor_parallel_size(self) -> int:
        return self.saved_tensor_parallel


def saved_tensor_parallel(info: CheckpointInfo) -> int:
    """The TP size the checkpoint was saved with (1 for metadata without a layout)."""
    return int(info.meta.get("layout", {}).get("tensor", 1))


def _eod_for(info: CheckpointInfo, config: ModelConfig, eod_token_id: Optional[int]) -> Optional[int]:
    if not config.attention_within_document or eod_token_id is not None:
        return eod_token_id
    data = info.meta.get("run", {}).get("data", {})
    model_path = data.get("tokenizer_model")
    if not model_path or not Path(model_path).exists():
        raise CheckpointError(
            f"{info.path}: the model attends within documents and needs the EOD id, but the "
            f"run's tokenizer ({model_path}) is not available; pass eod_token_id"
        )
    from megasparse.data.tokenizer import load_tokenizer

    return load_tokenizer(model_path, data.get("tokenizer_type")).eod_id


def load_state_dict(info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """The plain Transformer's state dict (``model.`` prefix stripped, TP shards joined), on the CPU.

    The embedding keeps the vocabulary padding of the saved TP size (a multiple of 128·TP rows).
    """
    return consolidated_state_dict(info.path, info.meta, info.model_config)


def load_model(
    checkpoint: Union[CheckpointInfo, str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    eod_token_id: Optional[int] = None,
) -> Transformer:
    """A :class:`Transformer` with the checkpoint's weights, in eval mode, on ``device``."""
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else read_checkpoint_info(checkpoint)
    problem = verify_model_files(info.path)
    if problem:
        raise CheckpointError(problem)
    config = info.model_config
    state = load_state_dict(info)
    # Built for the saved TP size's vocabulary padding: the padded rows took part in training's
    # softmax, so keeping them gives exactly the trained model's probabilities.
    tp = saved_tensor_parallel(info)
    factory = LOCAL_LAYERS if tp == 1 else _LocalLayersPaddedForTP(tp)
    model = Transformer(config, device="meta", eod_token_id=_eod_for(info, config, eod_token_id), layer_factory=factory)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise CheckpointError(
            f"{info.path}: weights do not match the saved model config ({' '.join(first[:2])[:300]})"
        ) from None
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval()

"""Read model weights out of our checkpoints, without DeepSpeed or an engine (layout: engine.py).

``list_checkpoints(path)`` accepts one checkpoint folder (``.../global_stepN`` with
``megasparse_meta.json``) or a checkpoint directory holding several; it returns them in step
order with the tokens consumed at each (from the meta's ``progress``).
``load_model(info)`` builds a plain :class:`Transformer` from the saved model config and loads
the weights, whatever TP × PP × DP layout and ZeRO stage 0–3 saved them (or a layout-free
checkpoint written by ``megasparse convert``): by default the optimizer's fp32 master weights,
with ``master=False`` the module copy (bf16 under bf16 training). Tensor-parallel shards are
joined and pipeline pieces renamed by source_state.py, one tensor at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from megasparse.checkpoint.engine import META_FILE, TAG_PATTERN, CheckpointError
from megasparse.checkpoint.layout import plain_layer_factory
from megasparse.checkpoint.layout_free import open_checkpoint
from megasparse.checkpoint.manifest import MANIFEST_FILE, check_files, has_manifest, read_manifest, verify_folder
from megasparse.config import ModelConfig
from megasparse.model.transformer import Transformer


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
    """Checksums of the folder's files against its manifest: None when good."""
    try:
        files = read_manifest(folder)
    except ValueError as e:
        return str(e)
    return check_files(folder, files)  # the weights may come from any of them (masters, shards)


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


def load_state_dict(info: CheckpointInfo, master: bool = True) -> dict[str, torch.Tensor]:
    """The plain Transformer's state dict (TP shards joined), on the CPU.

    ``master``: the optimizer's fp32 master weights (where the checkpoint has an optimizer: ZeRO
    1-3, bf16; under fp32 without ZeRO the module is the master); else the module copy. The
    embedding keeps the vocabulary padding of the saved TP size (a multiple of 128·TP rows).
    """
    source = open_checkpoint(info.path, info.meta)
    kind = "fp32" if master else "module"
    return {name: source.tensor(name, kind) for name in source.parameter_names()}


def load_model(
    checkpoint: Union[CheckpointInfo, str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    eod_token_id: Optional[int] = None,
    master: bool = True,
) -> Transformer:
    """A :class:`Transformer` with the checkpoint's weights, in eval mode, on ``device``.

    ``master=True`` loads the fp32 master weights, ``False`` the module copy (load_state_dict).
    """
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else read_checkpoint_info(checkpoint)
    problem = verify_model_files(info.path)
    if problem:
        raise CheckpointError(problem)
    config = info.model_config
    state = load_state_dict(info, master=master)
    # Built for the saved TP size's vocabulary padding: the padded rows took part in training's
    # softmax, so keeping them gives exactly the trained model's probabilities.
    factory = plain_layer_factory(saved_tensor_parallel(info))
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

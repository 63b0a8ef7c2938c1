"""Read model weights out of our checkpoints, without DeepSpeed or an engine (layout: checkpoint.py).

``list_checkpoints(path)`` accepts one checkpoint folder (``.../global_stepN`` with
``megasparse_meta.json``) or a checkpoint directory holding several; it returns them in step
order with the tokens consumed at each (from the meta's ``progress``).
``load_model(info)`` builds a :class:`Transformer` from the saved model config and loads the
weights from DeepSpeed's ``mp_rank_00_model_states.pt`` (key ``module``: the state dict of
``CausalLMLoss``, whose parameters are prefixed ``model.``).

Only TP = PP = 1 checkpoints are read here; sharded layouts must be consolidated first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from megasparse.config import ModelConfig
from megasparse.model.transformer import Transformer
from megasparse.training.checkpoint import META_FILE, TAG_PATTERN, CheckpointError

MODEL_STATES_FILE = "mp_rank_00_model_states.pt"
MODULE_PREFIX = "model."


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
    folder = Path(folder)
    meta_path = folder / META_FILE
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
    if (path / META_FILE).exists():
        return [read_checkpoint_info(path)]
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; give a checkpoint folder or a run's checkpoint directory")
    folders = [c for c in path.iterdir() if TAG_PATTERN.match(c.name) and (c / META_FILE).exists()]
    if not folders and (path / "ckpt").is_dir():  # a run folder whose checkpoints live in ckpt/
        return list_checkpoints(path / "ckpt")
    if not folders:
        raise CheckpointError(f"{path}: no complete checkpoints (global_stepN folders with {META_FILE}) found")
    return sorted((read_checkpoint_info(f) for f in folders), key=lambda c: c.step)


def _check_layout(info: CheckpointInfo) -> None:
    layout = info.meta.get("layout", {})
    tp, pp = int(layout.get("tensor", 1)), int(layout.get("pipeline", 1))
    if tp != 1 or pp != 1:
        raise CheckpointError(
            f"{info.path}: saved with tensor={tp}, pipeline={pp}; this reader handles TP=PP=1 checkpoints only; "
            "consolidate it first (tools/convert_checkpoint.py)"
        )


def _eod_for(info: CheckpointInfo, config: ModelConfig, eod_token_id: Optional[int]) -> Optional[int]:
    if not config.attention_within_document or eod_token_id is not None:
        return eod_token_id
    model_path = info.meta.get("run", {}).get("data", {}).get("tokenizer_model")
    if not model_path or not Path(model_path).is_file():
        raise CheckpointError(f"{info.path}: the model attends within documents and needs the EOD id, but the "
                              f"run's tokenizer ({model_path}) is not available; pass eod_token_id")
    from megasparse.data.tokenizer import Tokenizer

    return Tokenizer(model_path).eod_id


def load_state_dict(info: CheckpointInfo) -> dict[str, torch.Tensor]:
    """The Transformer's state dict (``model.`` prefix stripped), on the CPU."""
    _check_layout(info)
    path = info.path / MODEL_STATES_FILE
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the checkpoint holds no TP=PP=1 model states")
    # DeepSpeed's model-states file holds tensors, plain containers and strings only (checked on
    # deepspeed 0.19), so the safe unpickler reads it: no arbitrary code runs on load.
    try:
        states = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: cannot be read safely ({str(e).splitlines()[0][:200]})") from None
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict):
        raise CheckpointError(f"{path}: no 'module' state dict inside")
    return {k[len(MODULE_PREFIX):] if k.startswith(MODULE_PREFIX) else k: v for k, v in module.items()}


def load_model(checkpoint: Union[CheckpointInfo, str, Path], device: Union[str, torch.device] = "cpu",
               dtype: Optional[torch.dtype] = None, eod_token_id: Optional[int] = None) -> Transformer:
    """A :class:`Transformer` with the checkpoint's weights, in eval mode, on ``device``."""
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else read_checkpoint_info(checkpoint)
    config = info.model_config
    state = load_state_dict(info)
    model = Transformer(config, device="meta", eod_token_id=_eod_for(info, config, eod_token_id))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise CheckpointError(f"{info.path}: weights do not match the saved model config ({' '.join(first[:2])[:300]})") from None
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval()

"""Reading DeepSpeed's checkpoint files safely and lazily.

Files are opened with ``torch.load(mmap=True, weights_only=True)``: tensors stay on disk until a
slice of them is used, so a reader touches one tensor's bytes at a time, and no pickled code
runs. DeepSpeed's ZeRO optimizer files hold three small classes of its own besides tensors
(checked on deepspeed 0.19); they, and only they, are allowed through the safe unpickler.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from megasparse.checkpoint.engine import CheckpointError

# zero_pp_rank_{dp}_mp_rank_{mp}_optim_states.pt (ZeRO 1-3), bf16_zero_pp_rank_... (bf16 without ZeRO)
OPTIM_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
ZERO3_MODEL_FILE = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")
MODEL_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


@lru_cache(maxsize=1)
def _deepspeed_safe_globals() -> list[Any]:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_file(path: Path) -> Any:
    """One DeepSpeed file, memory-mapped; a missing or unreadable file is a one-line error."""
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete or was not written by this layout")
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 — any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path}: cannot be read safely ({str(e).splitlines()[0][:200]})") from None


def files_matching(folder: Path, pattern: re.Pattern) -> dict[tuple[int, ...], Path]:
    """{(numbers in the name): path} for the files of ``folder`` matching ``pattern``."""
    found = {}
    for path in folder.iterdir():
        m = pattern.match(path.name)
        if m:
            found[tuple(int(g) for g in m.groups())] = path
    return found

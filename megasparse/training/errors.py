"""Which exceptions are the user's to fix (printed as one line) rather than bugs (tracebacks)."""

from __future__ import annotations

from megasparse.checkpoint.disk_space import CheckpointWriteError
from megasparse.checkpoint.engine import CheckpointError
from megasparse.config import ConfigError
from megasparse.data.gpt_dataset import DatasetBuildError
from megasparse.data.indexed_dataset import IndexedDatasetError
from megasparse.data.tokenizer import TokenizerError
from megasparse.training import exit_codes
from megasparse.training.nonfinite import NonFiniteError

UserFacingError = (
    ConfigError,
    IndexedDatasetError,
    DatasetBuildError,
    TokenizerError,
    CheckpointError,
    FileNotFoundError,
    NonFiniteError,
)


def user_error_message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def exit_status(exc: BaseException) -> int:
    """The process status for a user-facing error (training/exit_codes.py)."""
    if isinstance(exc, CheckpointWriteError):  # no room on the disk, or the write failed
        return exit_codes.DISK_FULL
    if isinstance(exc, NonFiniteError):
        return exit_codes.NON_FINITE
    return exit_codes.BAD_INPUT

"""A flag that tells whether the current forward is a recomputation under activation checkpointing.

Activation counters must count each token once per training step (docs/design.md §4). Under activation
checkpointing every block's forward runs twice: once for real and once more during backward to
rebuild the activations it did not keep. The checkpoint wrapper enters :func:`recompute_context`
for the second run, and a count slot asks :func:`in_recompute` to refuse counting there.

The flag is a plain module global on purpose, not thread-local: PyTorch's autograd engine may run
backward (and so the recomputation) on a different thread from the one that ran the forward.
Forward and backward of one process never overlap, so one global is unambiguous.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

_in_recompute = False


def in_recompute() -> bool:
    """True only while a checkpointed block is being recomputed for backward."""
    return _in_recompute


@contextmanager
def recompute_context() -> Iterator[None]:
    """Marks the enclosed code as a recomputation (re-entrant: restores the previous value)."""
    global _in_recompute
    previous = _in_recompute
    _in_recompute = True
    try:
        yield
    finally:
        _in_recompute = previous


def recompute_mode(setting) -> str:
    """``train.activation_checkpointing`` (False/True or a mode) -> "none", "attention", "mlp" or "full"."""
    if setting is True:
        return "full"
    if setting is False or setting is None:
        return "none"
    if setting not in ("attention", "mlp", "full", "none"):
        raise ValueError(f"activation checkpointing {setting!r}: expected true/false, 'attention', 'mlp' or 'full'")
    return setting


def checkpoint_context_fn():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: (forward ctx, recompute ctx)."""
    return nullcontext(), recompute_context()

"""Checkpoints in any layout.

* ``engine.py``: saving and resuming a run through the DeepSpeed engine (progress, RNG states,
  counters and loader state beside DeepSpeed's own files; ``latest`` moves last).
* ``shards.py``: joining the shards a TP × PP layout wrote into the plain model's state dict.
* ``reader.py``: listing a run's checkpoints and loading one as a plain ``Transformer``, without
  DeepSpeed or an engine.
* ``manifest.py``: every file's size and checksum, written last at save and removed first at prune;
  ``integrity.py``: sealing a save, and choosing the checkpoint to resume from (the newest that
  checks out); ``disk_space.py``: room on the disk before a save, and a failed write cleaned up.

The on-disk layout is in docs/design.md §3.4.
"""

from megasparse.checkpoint.engine import CheckpointError
from megasparse.checkpoint.reader import (
    CheckpointInfo,
    list_checkpoints,
    load_model,
    load_state_dict,
    read_checkpoint_info,
)

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "list_checkpoints",
    "load_model",
    "load_state_dict",
    "read_checkpoint_info",
]

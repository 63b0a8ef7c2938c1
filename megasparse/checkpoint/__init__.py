"""Checkpoints in any layout.

* ``engine.py``: saving and resuming a run through the DeepSpeed engine (progress, RNG states,
  counters and loader state beside DeepSpeed's own files; ``latest`` moves last).
* ``layout.py``: the layout record every checkpoint carries (``megasparse_layout.json``).
* ``shards.py``: how a TP × PP layout splits the plain model (partition dims, pipeline pieces).
* ``deepspeed_files.py``, ``source_state.py``: reading any layout tensor by tensor: fp32 masters,
  Adam moments, module weights, for ZeRO 0–3.
* ``reader.py``: listing a run's checkpoints and loading one as a plain ``Transformer``, without
  DeepSpeed or an engine (fp32 masters by default).
* ``layout_free.py``, ``layout_free_resume.py``: the layout-free checkpoint ``megasparse convert``
  writes, and loading it into an engine of the recorded layout.
* ``formats.py``, ``reshard.py``, ``atomic_output.py``, ``safetensors_shards.py``: the convert
  command's format registry, the ``megasparse`` output format, output directories that appear
  whole, streamed sharded safetensors.
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

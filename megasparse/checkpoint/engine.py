"""Checkpoints on top of DeepSpeed's, with everything needed to continue as if never stopped.

Layout of ``checkpoint.dir``::

    latest                       the tag of the newest COMPLETE checkpoint (written last, atomically)
    global_step{N}/              DeepSpeed's model and (ZeRO) optimizer states + client state
        megasparse_meta.json     model config, layout (TP/PP/DP), ZeRO stage, version, progress
        megasparse_rank{R}.pt    per-rank state: RNG of every library, activation counters, loader
        megasparse_layout.json   what a layout-free reader needs (checkpoint/layout.py)
        megasparse_manifest.json every other file's size and checksum (written last, removed first)

``latest`` moves only after every rank has finished writing and the manifest is there, so a
checkpoint interrupted half way never becomes the one a restart resumes from; a folder without
a valid manifest counts as incomplete everywhere (manifest.py, integrity.py). Room on the disk
is checked before a save writes anything (disk_space.py).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import megasparse
from megasparse.checkpoint.layout import save_layout_record
from megasparse.checkpoint.manifest import write_durably

META_FILE = "megasparse_meta.json"
LATEST_FILE = "latest"
TAG_PATTERN = re.compile(r"^global_step(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the directory and the problem."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags whose folder has a manifest (written last at save, removed first at prune), oldest first."""
    from megasparse.checkpoint.integrity import sealed_tags

    return sealed_tags(ckpt_dir)


def save_checkpoint(
    engine,
    ckpt_dir: str,
    step: int,
    progress: dict[str, Any],
    rank_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> str:
    """Collective: every rank calls it. Returns the tag written.

    Order: room on the disk checked (nothing written if there is none), every rank's files, the
    metadata, the manifest (the folder is complete from here on), ``latest``, then pruning.
    """
    from megasparse.checkpoint import disk_space, integrity  # they build on this module

    root = Path(ckpt_dir)
    tag = f"global_step{step}"
    folder = root / tag
    estimate = disk_space.ensure_room(engine, root, step)
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        integrity.unseal(folder)  # an earlier, interrupted save of the same step
    _barrier()
    with disk_space.removed_if_write_fails(root, folder, step, estimate):
        engine.save_checkpoint(str(root), tag=tag, client_state={"megasparse": progress}, save_latest=False)
        torch.save({"rng": rng_state(), **rank_state}, folder / f"megasparse_rank{_rank()}.pt")
        save_layout_record(engine, folder, meta)
        _barrier()
        if _rank() == 0:
            full_meta = {"version": megasparse.__version__, "step": step, **meta, "progress": progress}
            _atomic_write(folder / META_FILE, json.dumps(full_meta, indent=2, default=str))
        integrity.seal(folder)
        if _rank() == 0:
            write_durably(root / LATEST_FILE, tag)
    if _rank() == 0:
        integrity.prune(root, keep_last)
    _barrier()
    return tag


def read_meta(ckpt_dir: str, tag: str) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / tag / META_FILE).read_text())


def check_layout(meta: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    for key, value in expected.items():
        if key == "zero_stage" and meta.get("format") == "layout-free":
            continue  # its optimizer state loads into any ZeRO stage
        if meta.get("layout", {}).get(key) != value:
            raise CheckpointError(
                f"{where}: saved with {key}={meta.get('layout', {}).get(key)}, this run has {key}={value}; "
                "resume with the same layout, or convert it for this one: megasparse convert "
                f"{where} NEW_DIR --to megasparse --tp {expected.get('tensor', 1)} --pp {expected.get('pipeline', 1)} "
                f"--dp {expected.get('data', 1)} --zero-stage {expected.get('zero_stage', 1)}, "
                "then resume with checkpoint.dir=NEW_DIR"
            )


# Checkpoints written before the groups were recorded used one group per parameter role.
_UNRECORDED_GROUPS = ["embedding", "norm", "matrix"]


def check_optimizer_groups(meta: dict[str, Any], expected: list[str], where: str) -> None:
    """Refuses optimizer state saved with other parameter groups than this version trains with."""
    saved = meta.get("optimizer_groups", _UNRECORDED_GROUPS)
    if list(saved) != expected:
        raise CheckpointError(
            f"{where}: its optimizer state has parameter groups {saved}, this version trains with {expected}; "
            "it cannot be resumed: start a new run in another checkpoint.dir "
            "(tools/measure_sparsity.py still reads its weights)"
        )


def load_checkpoint(engine, ckpt_dir: str, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads DeepSpeed state into the engine; returns (progress, this rank's state)."""
    meta = read_meta(ckpt_dir, tag)
    if meta.get("format") == "layout-free":  # written by megasparse convert (layout_free.py)
        from megasparse.checkpoint.layout_free_resume import load_layout_free

        return load_layout_free(engine, Path(ckpt_dir) / tag, meta)
    try:
        path, client = engine.load_checkpoint(
            ckpt_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except (RuntimeError, AssertionError, EOFError, KeyError, ValueError, OSError) as exc:
        # The files matched the manifest, so this is not damage; say where, in one line.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise CheckpointError(f"{Path(ckpt_dir) / tag}: DeepSpeed could not load it ({first})") from exc
    if path is None:
        raise CheckpointError(f"{Path(ckpt_dir) / tag}: DeepSpeed could not load this checkpoint")
    rank_file = Path(ckpt_dir) / tag / f"megasparse_rank{_rank()}.pt"
    if not rank_file.exists():
        raise CheckpointError(f"{rank_file}: missing; the checkpoint was written by fewer ranks than this run has")
    rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
    set_rng_state(rank_state.pop("rng"))
    return client["megasparse"], rank_state

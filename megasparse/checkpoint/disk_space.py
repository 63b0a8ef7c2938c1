"""Room on the checkpoint disk: checked before a save writes anything, and at start-up.

A save that runs out of space half way leaves a partial folder and, before this check, a
traceback that did not name the disk; a restart then trained until the next save and failed again.
So the space a save needs (the size of the previous checkpoint, or an estimate from the parameter
count for the first one) is compared with the free space first, and a run that cannot save stops
at once with one line naming the disk. A disk that fills up during the write (another job
writing) is still caught: the partial folder is removed and the same line is printed.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from megasparse.checkpoint.engine import CheckpointError
from megasparse.checkpoint.manifest import folder_bytes

# Bytes per parameter of a first checkpoint: fp32 weights, an fp32 master copy and Adam's two
# moments (bf16 weights make it 14; the estimate errs on the larger side).
BYTES_PER_PARAMETER = 16
# Room kept on top of the estimate (metadata, per-rank state, file-system overhead).
MARGIN_FRACTION = 0.05
MARGIN_BYTES = 1 << 20


class CheckpointWriteError(CheckpointError):
    """A save could not be written; the partial folder is gone and the previous checkpoint is untouched."""


class DiskFullError(CheckpointWriteError):
    """The checkpoint disk has no room for a save; the previous checkpoint is untouched."""


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} bytes"


def free_bytes(path: Path) -> int:
    probe = path if path.exists() else mount_point(path)
    return shutil.disk_usage(probe).free


def needed_bytes(estimate: int) -> int:
    return int(estimate * (1 + MARGIN_FRACTION)) + MARGIN_BYTES


def newest_checkpoint_bytes(ckpt_dir: Path) -> int:
    """Size of the newest complete checkpoint under ``ckpt_dir`` (0 when there is none)."""
    from megasparse.checkpoint.integrity import sealed_tags

    tags = sealed_tags(ckpt_dir)
    return folder_bytes(ckpt_dir / tags[-1]) if tags else 0


def disk_full_message(ckpt_dir: Path, step: int, need: int, free: int, previous: Optional[str]) -> str:
    kept = f"the previous checkpoint {previous} is intact" if previous else "no checkpoint was written yet"
    return (
        f"checkpoint.dir {ckpt_dir}: not enough disk space: {mount_point(ckpt_dir)} has {_size(free)} free, a "
        f"checkpoint at step {step} needs about {_size(need)}; {kept}. Free space there or set checkpoint.dir "
        "to a larger disk, then resume"
    )


def space_problem(ckpt_dir: Path, step: int, estimate: int, previous: Optional[str]) -> Optional[str]:
    """The one-line disk-full message when ``ckpt_dir``'s disk cannot take ``estimate`` bytes more."""
    need = needed_bytes(estimate)
    free = free_bytes(ckpt_dir)
    return disk_full_message(ckpt_dir, step, need, free, previous) if free < need else None


def is_out_of_space(exc: BaseException, ckpt_dir: Path, estimate: int) -> bool:
    """Whether a failed write ran out of room: ENOSPC/EDQUOT, or a disk left with less free space
    than the save needed (torch.save's C++ writer reports only ``iostream error``)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return free_bytes(ckpt_dir) < needed_bytes(estimate)


def estimated_checkpoint_bytes(engine) -> int:
    """Collective: bytes a checkpoint of this engine will take over all ranks (parameters held by
    several data-parallel ranks are counted once)."""
    from megasparse.checkpoint.integrity import gather_from_ranks

    local = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    share = local * BYTES_PER_PARAMETER // max(int(getattr(engine, "dp_world_size", 1)), 1)
    return int(sum(gather_from_ranks(share)))


def ensure_room(engine, ckpt_dir: Path, step: int) -> int:
    """Collective, before a save writes anything (and at start-up): raises DiskFullError on every
    rank when the disk cannot take the checkpoint of ``step``; returns the bytes expected."""
    from megasparse.checkpoint.integrity import agreed, from_rank0, rank_and_world, sealed_tags

    rank, _ = rank_and_world()
    estimate = estimated_checkpoint_bytes(engine)
    problem = None
    if rank == 0:
        estimate = newest_checkpoint_bytes(ckpt_dir) or estimate
        tags = sealed_tags(ckpt_dir)
        problem = space_problem(ckpt_dir, step, estimate, str(ckpt_dir / tags[-1]) if tags else None)
    estimate, problem = from_rank0((estimate, problem))
    if problem:
        raise agreed(DiskFullError(problem))
    return estimate


@contextmanager
def removed_if_write_fails(ckpt_dir: Path, folder: Path, step: int, estimate: int) -> Iterator[None]:
    """Around a save's writes on one rank: if they fail, the partial folder is removed (``latest``
    still names the previous checkpoint) and the failure is raised as one line: DiskFullError when
    the disk ran out of room, CheckpointWriteError naming the folder otherwise."""
    try:
        yield
    except Exception as exc:
        full = is_out_of_space(exc, ckpt_dir, estimate)
        free = free_bytes(ckpt_dir)
        from megasparse.checkpoint.manifest import remove_checkpoint_folder

        remove_checkpoint_folder(folder)
        latest = ckpt_dir / "latest"
        previous = str(ckpt_dir / latest.read_text().strip()) if latest.is_file() else None
        if full:
            raise DiskFullError(disk_full_message(ckpt_dir, step, needed_bytes(estimate), free, previous)) from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        kept = f"; the previous checkpoint {previous} is intact" if previous else ""
        raise CheckpointWriteError(
            f"{folder}: writing the checkpoint failed ({first}); the partial folder was removed{kept}"
        ) from exc

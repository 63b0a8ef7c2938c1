"""The collective side of checkpoint integrity: sealing a save with its manifest, and choosing the
checkpoint a run resumes from (the newest one that checks out, with a one-line note on any that
did not).

Every rank calls these functions in the same order; the checksum work is split over the ranks
(manifest.py) and the verdict is shared, so all ranks resume from the same folder or all stop
with the same one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch.distributed as dist

from megasparse.checkpoint import manifest
from megasparse.checkpoint.engine import LATEST_FILE, META_FILE, TAG_PATTERN, CheckpointError


def agreed(exc: Exception) -> Exception:
    """Marks an error every rank raises with the same message, so that rank 0 alone prints it."""
    exc.agreed_by_every_rank = True
    return exc


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_from_ranks(value: Any) -> list[Any]:
    rank, world = rank_and_world()
    if world == 1:
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (directory listings can differ between hosts for a moment)."""
    rank, world = rank_and_world()
    if world == 1:
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seal(folder: Path) -> None:
    """Collective, after every rank's files and the metadata are written: checksums every file
    (split over the ranks) and has rank 0 write the manifest, the last write of the save."""
    rank, world = rank_and_world()
    names = from_rank0(manifest.files_to_record(folder) if rank == 0 else None)
    mine = manifest.describe_files(folder, names[rank::world])
    described: dict[str, dict] = {}
    for part in gather_from_ranks(mine):
        described.update(part)
    if rank == 0:
        manifest.write_manifest(folder, described)


def folder_problem(folder: Path, checksums: bool = True) -> Optional[str]:
    """Collective: the first problem of a checkpoint folder (one line naming the file) or None."""
    rank, world = rank_and_world()
    problems = [p for p in gather_from_ranks(manifest.verify_folder(folder, checksums, rank, world)) if p]
    return problems[0] if problems else None


def sealed_tags(ckpt_dir: Path) -> list[str]:
    """Tags whose folder has a manifest, oldest first (their files are checked separately)."""
    found = []
    for child in ckpt_dir.iterdir() if ckpt_dir.is_dir() else []:
        m = TAG_PATTERN.match(child.name)
        if m and manifest.has_manifest(child):
            found.append((int(m.group(1)), child.name))
    return [t for _, t in sorted(found)]


def _auto_candidates(root: Path) -> tuple[Optional[str], list[str]]:
    """(the tag ``latest`` names, the tags to try newest first: that one, then older sealed ones)."""
    latest_file = root / LATEST_FILE
    named = latest_file.read_text().strip() if latest_file.is_file() else None
    sealed = sealed_tags(root)
    if named:
        match = TAG_PATTERN.match(named)
        limit = int(match.group(1)) if match else None
        older = [t for t in sealed if limit is None or int(TAG_PATTERN.match(t).group(1)) < limit]
        return named, [named] + older[::-1]
    return None, sealed[::-1]


def choose_resume_point(resume: str, ckpt_dir: Optional[str], warn: Callable[[str], None]) -> Optional[tuple[str, str]]:
    """Collective: ``checkpoint.resume`` → (directory, tag) of a verified checkpoint, or None.

    ``auto`` takes the folder ``latest`` names; when that one is damaged or incomplete it says
    which file, once, and falls back to the newest older folder that checks out. A checkpoint
    named explicitly is used only if it checks out (no silent substitute).
    """
    if resume == "none":
        return None
    rank, _ = rank_and_world()
    if resume == "auto":
        if not ckpt_dir:
            return None
        root = Path(ckpt_dir)
        named, candidates = from_rank0(_auto_candidates(root) if rank == 0 else None)
        if named is None and not candidates:
            return None  # a fresh start: nothing was ever saved here
        for tag in candidates:
            problem = folder_problem(root / tag)
            if problem is None:
                if tag != named:
                    what = f"'{named}' ({root / LATEST_FILE})" if named else f"no {root / LATEST_FILE}"
                    warn(f"resuming from {root / tag} instead of {what}")
                return str(root), tag
            warn(f"checkpoint {root / tag} is not usable: {problem}")
        raise agreed(
            CheckpointError(
                f"{root}: no usable checkpoint (tried {', '.join(candidates) or 'none'}); resume from another "
                "directory, or start afresh with checkpoint.resume=none"
            )
        )
    path = Path(resume)
    if (path / META_FILE).exists() or manifest.has_manifest(path):
        problem = folder_problem(path)
        if problem:
            raise agreed(CheckpointError(f"{problem}; give another checkpoint folder, or checkpoint.resume=auto"))
        return str(path.parent), path.name
    if (path / LATEST_FILE).exists() or sealed_tags(path):
        return choose_resume_point("auto", str(path), warn)
    raise CheckpointError(f"{path}: not a megasparse checkpoint (no {manifest.MANIFEST_FILE} or {LATEST_FILE} found)")


def unseal(folder: Path) -> None:
    """Before (re)writing a folder: its old manifest and metadata go first, so that whatever the
    new save leaves behind is never taken for complete."""
    (folder / manifest.MANIFEST_FILE).unlink(missing_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)


def prune(root: Path, keep_last: int) -> None:
    """Rank 0, after ``latest`` moved: removes sealed folders beyond the newest ``keep_last``, and
    left-overs of interrupted saves (no manifest, no metadata) older than the newest kept one.
    Folders with metadata but no manifest are left alone: they may be a megasparse that kept no
    manifests, and are the user's to judge."""
    sealed = sealed_tags(root)
    for tag in sealed[:-keep_last]:
        manifest.remove_checkpoint_folder(root / tag)
    if not sealed:
        return
    newest = int(TAG_PATTERN.match(sealed[-1]).group(1))
    for child in root.iterdir():
        m = TAG_PATTERN.match(child.name)
        if m and int(m.group(1)) < newest and not manifest.has_manifest(child) and not (child / META_FILE).exists():
            manifest.remove_checkpoint_folder(child)

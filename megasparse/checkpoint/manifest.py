"""Checkpoint manifests: the files a complete checkpoint folder holds, with sizes and checksums.

The manifest is written last when a checkpoint is saved (after every rank's files and the
metadata) and removed first when a folder is pruned. So a folder without a valid manifest is
incomplete, however it came to be: a save killed half way, a prune killed half way, a disk that
filled up. Readers and resume trust only folders whose manifest is there and whose files match it.

Checksums are XXH3-128 (``xxhash``): 4.2 GB/s on one core against 0.92 GB/s for SHA-256
(benchmarks/RESULTS.md §10), which matters for multi-GB shards checked at every save and resume. It
catches truncation, flipped bits and overwritten files; it is not meant to resist tampering.
Hashing is shared between ranks (file i by rank i mod world), so a save or a resume of a large
checkpoint costs each rank only its share of the reading.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

import xxhash

MANIFEST_FILE = "megasparse_manifest.json"
ALGORITHM = "xxh3_128"
_CHUNK = 16 << 20  # bytes read at a time: large enough for full disk speed, small in memory


def file_checksum(path: Path) -> str:
    """XXH3-128 of a file's bytes, as 32 hex digits."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(folder: Path, names: Iterable[str]) -> dict[str, dict]:
    """``{name: {"size": bytes, "xxh3_128": hex}}`` of the given files in ``folder``."""
    return {name: {"size": (folder / name).stat().st_size, ALGORITHM: file_checksum(folder / name)} for name in names}


def files_to_record(folder: Path) -> list[str]:
    """Every regular file of a checkpoint folder except the manifest and temporary files, sorted."""
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_FILE and not p.name.endswith(".tmp")
    )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file, flushes it to disk and renames it over ``path``: after a
    crash (even of the machine) ``path`` holds the old or the new content, never a part of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_manifest(folder: Path, files: dict[str, dict]) -> None:
    """The last write of a save: from this moment on the folder counts as complete."""
    manifest = {"algorithm": ALGORITHM, "files": dict(sorted(files.items()))}
    write_durably(folder / MANIFEST_FILE, json.dumps(manifest, indent=1))


def read_manifest(folder: Path) -> dict[str, dict]:
    """The recorded files of a folder; raises ValueError with a one-line reason when unusable."""
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path}: missing, so the folder is incomplete (a save or a prune was interrupted, or it was "
            "written by a megasparse that kept no manifests: `megasparse seal` adds one)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: damaged (not valid JSON)") from None
    if not isinstance(manifest, dict) or manifest.get("algorithm") != ALGORITHM or "files" not in manifest:
        raise ValueError(f"{path}: not a megasparse manifest with {ALGORITHM} checksums")
    return manifest["files"]


def has_manifest(folder: Path) -> bool:
    return (folder / MANIFEST_FILE).is_file()


def check_files(folder: Path, files: dict[str, dict], checksums: bool = True) -> Optional[str]:
    """The first problem of the given recorded files, as one line naming the file, or None."""
    for name, recorded in sorted(files.items()):
        path = folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{path}: missing (the manifest lists it)"
        if size != recorded["size"]:
            return f"{path}: {size:,} bytes, the manifest says {recorded['size']:,} (truncated or overwritten)"
        if checksums and file_checksum(path) != recorded[ALGORITHM]:
            return f"{path}: checksum differs from the manifest (damaged: changed bytes of the same size)"
    return None


def verify_folder(folder: Path, checksums: bool = True, rank: int = 0, world: int = 1) -> Optional[str]:
    """This rank's share (every ``world``-th recorded file) of the folder's check: None when good."""
    try:
        files = read_manifest(folder)
    except ValueError as e:
        return str(e)
    names = sorted(files)[rank::world]
    return check_files(folder, {n: files[n] for n in names}, checksums)


def remove_checkpoint_folder(folder: Path) -> None:
    """Removes a checkpoint folder so that a kill at any moment leaves it visibly incomplete:
    the manifest goes first (durably), then the metadata, then the rest."""
    from megasparse.checkpoint.engine import META_FILE  # the engine imports this module

    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    if folder.is_dir():
        _fsync_dir(folder)
    (folder / META_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    """Total size of a complete folder's recorded files (0 when it has no valid manifest)."""
    try:
        return sum(int(f["size"]) for f in read_manifest(folder).values())
    except ValueError:
        return 0

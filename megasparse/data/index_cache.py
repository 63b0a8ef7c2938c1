"""Atomic on-disk cache for the sample-index arrays (document, sample, shuffle, blend indices).

Why it looks like this: on a cluster every rank may start at the same moment, on node-local
storage, with no shared filesystem and no lock. So there is no "rank 0 builds, others wait":
each rank that misses the cache builds the arrays itself (the result is bit-identical, being a
pure function of the key) and publishes them with ``os.replace`` from a temporary name in the
same folder. A reader therefore sees either nothing or a complete file, never a half-written one.

One entry is a set of ``.npy`` files plus a ``.json`` manifest written LAST; an entry counts as
present only when the manifest exists and every array matches the shape and dtype it records.
Leftover ``*.tmp-*`` files from a crashed writer are never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


def hash_key(parts: list) -> str:
    """A short stable hex digest of a list of bytes / str / int / float / None / ndarray parts."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"megasparse-index-cache-v{CACHE_FORMAT_VERSION}".encode())
    for part in parts:
        if isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(f"nd{arr.dtype.str}{arr.shape}".encode())
            h.update(memoryview(arr).cast("B"))
        elif isinstance(part, (bytes, bytearray, memoryview)):
            h.update(b"b" + bytes(part))
        else:
            h.update(f"r{part!r}".encode())
        h.update(b"\x00")  # separator, so ("ab", "c") != ("a", "bc")
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Writes through ``write(file)`` to a unique temp name beside ``path``, then renames."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)


class IndexCache:
    """One cache entry: ``{folder}/{stem}-{name}.npy`` arrays and the ``{folder}/{stem}.json`` manifest.

    ``folder=None`` disables the cache (everything stays in memory).
    """

    def __init__(self, folder: Optional[str], stem: str):
        self.folder = Path(folder) if folder is not None else None
        self.stem = stem

    @property
    def manifest_path(self) -> Optional[Path]:
        return None if self.folder is None else self.folder / f"{self.stem}.json"

    def array_path(self, name: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{self.stem}-{name}.npy"

    def load(self) -> Optional[dict[str, np.ndarray]]:
        """The cached arrays (memory-mapped, read-only), or None when absent or damaged."""
        manifest_path = self.manifest_path
        if manifest_path is None or not manifest_path.exists():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            arrays = {}
            for name, spec in manifest["arrays"].items():
                arr = np.load(self.array_path(name), mmap_mode="r", allow_pickle=False)
                if list(arr.shape) != spec["shape"] or arr.dtype.str != spec["dtype"]:
                    raise ValueError(f"{name}: shape/dtype {arr.shape}/{arr.dtype.str} != manifest {spec}")
                arrays[name] = arr
            return arrays
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            # A damaged entry is rebuilt, never trusted; the rebuild overwrites it atomically.
            logger.warning("index cache %s is damaged (%s); rebuilding it", manifest_path, exc)
            return None

    def save(self, arrays: dict[str, np.ndarray], description: dict) -> bool:
        """Publishes the arrays, then the manifest. Returns False (and logs) when not writable."""
        if self.folder is None:
            return False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for name, arr in arrays.items():
                _atomic_write(self.array_path(name), lambda f, a=arr: np.save(f, np.ascontiguousarray(a)))
            manifest = {
                "description": description,
                "arrays": {n: {"shape": list(a.shape), "dtype": a.dtype.str} for n, a in arrays.items()},
            }
            payload = json.dumps(manifest, indent=1, sort_keys=True).encode()
            _atomic_write(self.manifest_path, lambda f: f.write(payload))
            return True
        except OSError as exc:
            logger.warning("cannot write index cache in %s (%s); keeping the index in memory", self.folder, exc)
            return False

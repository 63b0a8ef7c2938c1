"""Output directories that appear whole or not at all.

A conversion writes into ``DST.tmp-XXXXXX`` beside the destination and renames it to ``DST`` only
when every file is written, so an interrupted or failed conversion never leaves a half-written
directory where a good one stood (or where a later run would take it for a finished one).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

from megasparse.checkpoint.engine import CheckpointError


def check_destination(destination: Union[str, Path], overwrite: bool) -> Path:
    """Refuses an existing destination unless ``overwrite``; call it before any work starts."""
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise CheckpointError(
            f"{destination}: already exists; pass --overwrite to replace it, or choose another output directory"
        )
    if destination.exists() and not destination.is_dir():
        raise CheckpointError(f"{destination}: exists and is not a directory; remove it or choose another output")
    return destination


@contextmanager
def atomic_directory(destination: Union[str, Path], overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty temporary directory that becomes ``destination`` when the block succeeds.

    On an exception the temporary directory is removed and ``destination`` is left as it was.
    With ``overwrite`` an existing destination is replaced only after the new one is complete.
    """
    destination = check_destination(destination, overwrite)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{destination.name}.tmp-", dir=destination.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the result private to this user
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if destination.exists():
        # Two renames (old aside, new in) keep the window without a destination to an instant.
        old = Path(tempfile.mkdtemp(prefix=f"{destination.name}.old-", dir=destination.parent))
        old.rmdir()
        destination.rename(old)
        tmp.rename(destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(destination)

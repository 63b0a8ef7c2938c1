"""How far through its input files a reader is, in bytes on disk, for progress bars with an ETA.

The readers hand out records, not file positions, and a compressed file's position is hidden in
its decompressor. So the meter counts what it can see and scales it to the file's size on disk:

* plain jsonl/text: the raw line bytes (exactly the file position);
* ``.gz`` / ``.zst``: the raw (decompressed) line bytes × disk size ÷ decompressed size, the
  latter from the gzip trailer or the zstd frame header (assumed 4× the disk size when absent);
* parquet / arrow: the rows read ÷ the file's rows × its size.

Within a file the estimate never passes the file's size; when the next file starts, the previous
one counts in full. The result is an estimate inside a file and exact at file boundaries.
"""

from __future__ import annotations

import os
import struct
from typing import Sequence

from megasparse.data.readers import FORMAT_ARROW, FORMAT_PARQUET, RawChunk, detect_format

ASSUMED_COMPRESSION_RATIO = 4.0


def _decompressed_size(path: str, compression: str, disk: int) -> float:
    """The decompressed size of a compressed file, or the disk size × an assumed ratio."""
    try:
        if compression == ".gz" and disk >= 18:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                size = struct.unpack("<I", f.read(4))[0]  # ISIZE: size mod 2**32 (last member only)
            if size >= disk:
                return float(size)
        elif compression == ".zst":
            import zstandard

            with open(path, "rb") as f:
                size = zstandard.frame_content_size(f.read(18))
            if size > 0:
                return float(size)
    except (OSError, ValueError, struct.error):
        pass
    except Exception:  # zstandard.ZstdError for a damaged header: the reader will report it
        pass
    return disk * ASSUMED_COMPRESSION_RATIO


def _rows(path: str, fmt: str) -> int:
    import pyarrow as pa

    try:
        if fmt == FORMAT_PARQUET:
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        from megasparse.data.readers import _iter_arrow_batches

        return sum(batch.num_rows for batch in _iter_arrow_batches(path))  # memory-mapped, no copy
    except (OSError, pa.ArrowException):
        return 0  # unreadable: the reader reports it


def chunk_amount(chunk: RawChunk) -> int:
    """What a chunk advances its file by: raw line bytes, or rows of a table."""
    if isinstance(chunk.payload, dict):
        return len(chunk)
    return sum(len(line) for line in chunk.payload)


class InputProgress:
    """Bytes-on-disk done for a stream of :class:`RawChunk` from the files ``paths``, in order."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self.sizes = {p: os.path.getsize(p) for p in self.paths}
        self.total = float(sum(self.sizes.values()))
        self._finished = 0.0  # bytes of the files before the current one
        self._current: str | None = None
        self._seen = 0.0  # raw bytes or rows of the current file so far
        self._scale = 1.0  # disk bytes per raw byte or per row of the current file

    def _start(self, path: str) -> None:
        if self._current is not None:
            self._finished += self.sizes[self._current]
        self._current, self._seen = path, 0.0
        fmt, compression = detect_format(path)
        disk = self.sizes[path]
        if fmt in (FORMAT_PARQUET, FORMAT_ARROW):
            rows = _rows(path, fmt)
            self._scale = disk / rows if rows else 0.0
        elif compression:
            self._scale = disk / max(_decompressed_size(path, compression, disk), 1.0)
        else:
            self._scale = 1.0

    def advance(self, source: str, amount: float) -> float:
        """Counts ``amount`` (:func:`chunk_amount`) of file ``source``, read in file order; returns
        the bytes done so far."""
        if source != self._current:
            self._start(source)
        self._seen += amount
        return self.done

    @property
    def done(self) -> float:
        if self._current is None:
            return 0.0
        within = min(self._seen * self._scale, float(self.sizes[self._current]))
        return self._finished + within

    def finish(self) -> float:
        """Every file read: the total."""
        self._finished, self._current = self.total, None
        return self.total

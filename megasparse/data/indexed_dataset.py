"""Megatron-compatible ``{prefix}.bin`` / ``{prefix}.idx`` token files: reader and writer.

Layout of ``.idx`` (little-endian; identical to megatron-core's ``IndexedDataset``):

    0   9 B        magic b"MMIDIDX\\x00\\x00"
    9   uint64     version = 1
    17  uint8      dtype code of the .bin tokens (4 = int32, 8 = uint16, ...)
    18  uint64     sequence count N
    26  uint64     document count D (= documents + 1; the first entry is 0)
    34  int32[N]   sequence lengths
        int64[N]   sequence byte offsets into .bin
        int64[D]   document indices (sequence index at which each document ends)

``.bin`` is the plain concatenation of every sequence's tokens. For GPT data one document is
one sequence, so the document index is ``[0, 1, ..., N]``.
"""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = 34

# megatron-core's codes (gpt-neox swaps 6 and 7; token dtypes agree).
DTYPE_CODES: dict[int, type] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}


class IndexedDatasetError(ValueError):
    """A token file that cannot be read; the message names the file and the problem."""


def data_file_path(prefix: Union[str, Path]) -> str:
    return f"{prefix}.bin"


def index_file_path(prefix: Union[str, Path]) -> str:
    return f"{prefix}.idx"


def token_dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (Megatron's rule: vocabulary below 65,500), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


class IndexedDatasetWriter:
    """Streams documents into ``{prefix}.bin`` and writes ``{prefix}.idx`` on :meth:`finalize`.

    Both files are written under temporary names and renamed at the end, so an interrupted
    run never leaves a ``.bin/.idx`` pair that looks complete.
    """

    def __init__(self, prefix: Union[str, Path], dtype: Union[np.dtype, type] = np.uint16):
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = data_file_path(self.prefix) + ".tmp"
        self._bin = open(self._bin_tmp, "wb")
        # Compact typed arrays (4 + 8 bytes per document), not Python lists (~70 bytes each):
        # a 100M-document corpus keeps its index in ~1.2 GB instead of ~7 GB.
        self._lengths = array("i")
        self._doc_indices = array("q", [0])
        self._finalized = False

    def add_document(self, tokens: Union[np.ndarray, Iterable[int]]) -> None:
        """Appends one document (one sequence)."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"a document must be 1-D, got shape {arr.shape}")
        if arr.dtype != self.dtype:
            if arr.size and (arr.min() < np.iinfo(self.dtype).min or arr.max() > np.iinfo(self.dtype).max):
                raise ValueError(f"token ids out of range for {self.dtype}")
            arr = arr.astype(self.dtype)
        self._bin.write(arr.tobytes(order="C"))
        self._lengths.append(int(arr.size))
        self._doc_indices.append(len(self._lengths))

    def add_documents_from_buffer(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Appends many documents given as one flat token array and their lengths (fast path)."""
        flat = np.ascontiguousarray(flat, dtype=self.dtype)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != flat.size:
            raise ValueError("lengths do not add up to the buffer size")
        self._bin.write(flat.tobytes(order="C"))
        start = len(self._lengths)
        self._lengths.frombytes(lengths.astype(np.int32).tobytes())
        self._doc_indices.frombytes(np.arange(start + 1, start + 1 + lengths.size, dtype=np.int64).tobytes())

    def add_index(self, other_prefix: Union[str, Path]) -> None:
        """Appends every document of another dataset (used to merge shards)."""
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise IndexedDatasetError(
                f"{index_file_path(other_prefix)}: token dtype {other.dtype} differs from {self.dtype}; "
                "merge only datasets written with the same tokenizer"
            )
        start = len(self._lengths)
        self._lengths.frombytes(np.asarray(other.sequence_lengths, dtype=np.int32).tobytes())
        self._doc_indices.frombytes((np.asarray(other.document_indices[1:], dtype=np.int64) + start).tobytes())
        with open(data_file_path(other_prefix), "rb") as src:
            while chunk := src.read(1 << 24):
                self._bin.write(chunk)

    @property
    def num_documents(self) -> int:
        return len(self._lengths)

    def finalize(self) -> None:
        if self._finalized:
            return
        self._bin.close()
        write_index(
            index_file_path(self.prefix),
            self.dtype,
            np.frombuffer(self._lengths, dtype=np.int32),
            np.frombuffer(self._doc_indices, dtype=np.int64),
        )
        os.replace(self._bin_tmp, data_file_path(self.prefix))
        self._finalized = True

    def abort(self) -> None:
        """Discards what was written (used when an error stops the run)."""
        if not self._finalized:
            self._bin.close()
            Path(self._bin_tmp).unlink(missing_ok=True)
            self._finalized = True

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()


def write_index(path: str, dtype: np.dtype, lengths: np.ndarray, doc_indices: np.ndarray) -> None:
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(lengths.size, dtype=np.int64)
    if lengths.size > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * itemsize, out=pointers[1:])
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", CODE_OF_DTYPE[np.dtype(dtype)]))
        f.write(struct.pack("<Q", lengths.size))
        f.write(struct.pack("<Q", doc_indices.size))
        f.write(lengths.astype("<i4").tobytes(order="C"))
        f.write(pointers.astype("<i8").tobytes(order="C"))
        f.write(doc_indices.astype("<i8").tobytes(order="C"))
    os.replace(tmp, path)


class IndexedDataset:
    """Memory-mapped reader; ``ds[i]`` is sequence i as a numpy array (a view, no copy)."""

    def __init__(self, prefix: Union[str, Path]):
        self.prefix = str(prefix)
        idx_path, bin_path = index_file_path(self.prefix), data_file_path(self.prefix)
        for p in (idx_path, bin_path):
            if not os.path.exists(p):
                raise IndexedDatasetError(f"{p}: file not found; check the dataset prefix")
        idx_size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            header = f.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or header[:9] != MAGIC:
            raise IndexedDatasetError(
                f"{idx_path}: not a Megatron mmap index (bad magic {header[:9]!r}); "
                "regenerate it with tools/preprocess_data.py"
            )
        (version,) = struct.unpack("<Q", header[9:17])
        if version != VERSION:
            raise IndexedDatasetError(f"{idx_path}: index version {version} is not supported (expected 1)")
        code = header[17]
        if code not in DTYPE_CODES:
            raise IndexedDatasetError(f"{idx_path}: unknown dtype code {code} (known: {sorted(DTYPE_CODES)})")
        self.dtype = np.dtype(DTYPE_CODES[code])
        n_seq, n_doc = struct.unpack("<QQ", header[18:34])
        expected = HEADER_SIZE + 12 * n_seq + 8 * n_doc
        if idx_size < expected:
            raise IndexedDatasetError(f"{idx_path}: truncated index ({idx_size} bytes, header promises {expected})")
        self._idx = np.memmap(idx_path, mode="r", order="C")
        off = HEADER_SIZE
        self.sequence_lengths = np.frombuffer(self._idx, dtype=np.int32, count=n_seq, offset=off)
        off += 4 * n_seq
        self.sequence_pointers = np.frombuffer(self._idx, dtype=np.int64, count=n_seq, offset=off)
        off += 8 * n_seq
        self.document_indices = np.frombuffer(self._idx, dtype=np.int64, count=n_doc, offset=off)
        total_bytes = (
            int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize if n_seq else 0
        )
        bin_size = os.path.getsize(bin_path)
        if bin_size < total_bytes:
            raise IndexedDatasetError(
                f"{bin_path}: truncated ({bin_size} bytes, index expects {total_bytes}); "
                "the file was cut short — rerun preprocessing"
            )
        if bin_size > total_bytes or idx_size > expected or (n_doc and int(self.document_indices[-1]) != n_seq):
            # Every byte of a .bin belongs to a sequence the .idx lists: a longer file, or an index
            # whose document boundaries do not end at its last sequence, is another dataset's pair.
            raise IndexedDatasetError(
                f"{bin_path}: {bin_size:,} bytes, but {idx_path} describes {n_seq:,} sequences of {self.dtype.name} "
                f"in {total_bytes:,} bytes ({n_doc - 1 if n_doc else 0:,} documents); the .bin and .idx do not "
                "belong together: use the pair one preprocessing run wrote, or rerun preprocessing"
            )
        self._bin: Optional[np.memmap] = np.memmap(bin_path, mode="r", order="C") if bin_size else None

    def __len__(self) -> int:
        return int(self.sequence_lengths.size)

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    def get(self, index: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of sequence ``index``."""
        seq_len = int(self.sequence_lengths[index])
        if length is None:
            length = seq_len - offset
        if offset < 0 or length < 0 or offset + length > seq_len:
            raise IndexError(f"tokens [{offset}, {offset + length}) outside sequence {index} of length {seq_len}")
        if length == 0 or self._bin is None:
            return np.empty(0, dtype=self.dtype)
        start = int(self.sequence_pointers[index]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin, dtype=self.dtype, count=length, offset=start)

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sequence {index} out of range for {len(self)} sequences")
        return self.get(index)


def dataset_exists(prefix: Union[str, Path]) -> bool:
    return os.path.exists(index_file_path(prefix)) and os.path.exists(data_file_path(prefix))

"""GPT training samples: fixed-length windows cut from documents concatenated with EOD.

The token stream of one epoch is every document (one ``.idx`` sequence = one document) in a
seeded random order, each followed by the EOD token. Epochs are appended until the stream holds
``num_samples`` samples. Sample ``k`` of the stream covers tokens ``[k*s, k*s + s + 1)`` (s =
``seq_length``), so consecutive samples share one token: the last input token of one sample is
the first of the next, and inputs/labels are ``sample[:-1]`` / ``sample[1:]``.

EOD convention (``eod_id``):
  * ``None``: documents are concatenated as they are (use when preprocessing already appended
    EOD, or when no separator is wanted).
  * an id: a document whose last token is not ``eod_id`` is read as if ``eod_id`` followed it;
    a document that already ends with it (``preprocess_data --append-eod``) is left alone, so
    EOD is never doubled. Empty documents contribute nothing (no lone EOD).

Samples are then shuffled WITHIN each epoch (a sample belongs to the epoch its first token
comes from): training sees every document of epoch e before any of epoch e+1.

The three index arrays are built with vectorised numpy (seconds for 1B tokens / 1M documents)
and cached on disk, keyed by the data's fingerprint and every argument that changes them; see
``index_cache.py`` for why every rank may build them itself. With an ``eod_id``, which documents
lack a final EOD takes one pass over the ``.bin``; that result depends only on the data and is
cached separately, so other seeds, sequence lengths and splits do not pay for it again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from megasparse.data.index_cache import IndexCache, hash_key
from megasparse.data.indexed_dataset import IndexedDataset, data_file_path, index_file_path

logger = logging.getLogger(__name__)

# Independent random streams derived from the one user seed.
_STREAM_DOCUMENT_ORDER = 1
_STREAM_SAMPLE_ORDER = 2


class DatasetBuildError(ValueError):
    """The data cannot provide what was asked; the message names the dataset prefix."""


def default_cache_dir(prefix: str) -> str:
    """``{prefix}_cache/`` beside the data files."""
    return f"{prefix}_cache"


def dataset_fingerprint(indexed: IndexedDataset) -> list:
    """What identifies a dataset's content cheaply, independent of its path and mtime.

    Path-free on purpose: a copy of the data on node-local disk keeps its cache key, so a cache
    built once (offline or on another node) can be shipped with the data. It hashes the full
    sequence lengths (the index build depends on nothing else), the file sizes, and the first
    and last 64 KiB of the ``.bin`` (which catches re-tokenised data with identical lengths).
    """
    bin_path = data_file_path(indexed.prefix)
    bin_size = os.path.getsize(bin_path)
    with open(bin_path, "rb") as f:
        head = f.read(1 << 16)
        f.seek(max(0, bin_size - (1 << 16)))
        tail = f.read(1 << 16)
    return [
        str(indexed.dtype),
        os.path.getsize(index_file_path(indexed.prefix)),
        bin_size,
        np.asarray(indexed.sequence_lengths),
        head,
        tail,
    ]


def _smallest_int_dtype(max_value: int) -> np.dtype:
    return np.dtype(np.int32) if max_value < np.iinfo(np.int32).max else np.dtype(np.int64)


def documents_missing_eod(indexed: IndexedDataset, documents: np.ndarray, eod_id: int) -> np.ndarray:
    """Bool per entry of ``documents``: non-empty and its last token is not ``eod_id``."""
    lengths = indexed.sequence_lengths[documents].astype(np.int64)
    non_empty = lengths > 0
    missing = np.zeros(documents.size, dtype=bool)
    if not non_empty.any():
        return missing
    itemsize = indexed.dtype.itemsize
    last = indexed.sequence_pointers[documents[non_empty]] // itemsize + lengths[non_empty] - 1
    missing[non_empty] = _read_tokens_at(data_file_path(indexed.prefix), indexed.dtype, last) != eod_id
    return missing


_CHUNK_TOKENS = 1 << 25  # 32M tokens per sequential read


def _read_tokens_at(bin_path: str, dtype: np.dtype, positions: np.ndarray) -> np.ndarray:
    """``tokens[positions]`` of a .bin, fast for ~one position per page or sparser.

    A memmap gather faults in one page per position (about 10 µs each: 10 s for 1M documents);
    where positions are dense, reading the stretch sequentially is 10x faster. So the file is
    walked in chunks, each read whole when it holds enough positions, else gathered.
    """
    itemsize = np.dtype(dtype).itemsize
    num_tokens = os.path.getsize(bin_path) // itemsize
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(num_tokens,))
    order = np.argsort(positions, kind="stable")
    sorted_pos = positions[order]
    out = np.empty(positions.size, dtype=dtype)
    bounds = np.searchsorted(sorted_pos, np.arange(0, num_tokens + _CHUNK_TOKENS, _CHUNK_TOKENS))
    with open(bin_path, "rb") as f:
        for chunk, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if lo == hi:
                continue
            start = chunk * _CHUNK_TOKENS
            wanted = sorted_pos[lo:hi]
            dense = (hi - lo) * 4096 > _CHUNK_TOKENS * itemsize // 8  # touches > 1/8 of its pages
            if dense:
                f.seek(start * itemsize)
                count = min(_CHUNK_TOKENS, num_tokens - start)
                block = np.fromfile(f, dtype=dtype, count=count)
                out[order[lo:hi]] = block[wanted - start]
            else:
                out[order[lo:hi]] = tokens[wanted]
    return out


def build_sample_indices(
    effective_lengths: np.ndarray, seq_length: int, num_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three index arrays over documents ``0..D-1`` of the given (EOD-inclusive) lengths.

    Returns:
      document_order  [E*D]       document position (0..D-1) at each place of the E-epoch stream
      sample_index    [n+1, 2]    (place in document_order, token offset) where sample k starts;
                                  row n is where the last sample's successor would start
      shuffle_index   [n]         stream sample served at dataset position i
    """
    lengths = np.asarray(effective_lengths, dtype=np.int64)
    num_docs, total = lengths.size, int(lengths.sum())
    if num_samples == 0:
        return np.zeros(0, np.int32), np.zeros((1, 2), np.int32), np.zeros(0, np.int32)
    needed = num_samples * seq_length + 1  # the last sample reaches one token past n*s
    num_epochs = -(-needed // total)

    # Document order: an independent permutation per epoch (row e depends only on the stream up
    # to row e, so asking for more samples later keeps the earlier epochs' order).
    rng = np.random.default_rng([seed, _STREAM_DOCUMENT_ORDER])
    order = rng.permuted(np.broadcast_to(np.arange(num_docs, dtype=np.int64), (num_epochs, num_docs)), axis=1)
    order = order.reshape(-1)
    starts = np.zeros(order.size, dtype=np.int64)  # stream position where each placed document starts
    np.cumsum(lengths[order][:-1], out=starts[1:])

    # Sample k starts at stream position k*s; find its document by binary search (vectorised).
    positions = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    place = np.searchsorted(starts, positions, side="right") - 1
    offset = positions - starts[place]
    sample_dtype = _smallest_int_dtype(max(int(place[-1]), int(offset.max())))
    sample_index = np.stack([place, offset], axis=1).astype(sample_dtype)

    # Shuffle samples within the epoch of their first token: sort by (epoch, random key).
    epoch_of_sample = positions[:-1] // total
    keys = np.random.default_rng([seed, _STREAM_SAMPLE_ORDER]).random(num_samples)
    shuffle = np.lexsort((keys, epoch_of_sample)).astype(_smallest_int_dtype(num_samples))
    return order.astype(_smallest_int_dtype(num_docs)), sample_index, shuffle


class GPTDataset:
    """``ds[i]`` is an int64 array of ``seq_length + 1`` tokens; ``len(ds) == num_samples``.

    ``document_ids`` restricts the dataset to those sequences of ``indexed`` (train/valid splits
    by document ranges). ``cache_dir=None`` caches beside the data in ``{prefix}_cache/``, and
    falls back to memory when that is not writable. After construction ``cache_hit`` tells
    whether the index came from the cache.
    """

    def __init__(
        self,
        indexed: IndexedDataset,
        seq_length: int,
        num_samples: int,
        seed: int,
        eod_id: Optional[int] = None,
        document_ids: Optional[np.ndarray] = None,
        cache_dir: Optional[str] = None,
        name: str = "train",
    ):
        if seq_length <= 0:
            raise ValueError(f"seq_length must be positive, got {seq_length}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.indexed = indexed
        self.seq_length = int(seq_length)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.eod_id = None if eod_id is None else int(eod_id)
        self.name = name
        if document_ids is None:
            documents = np.arange(len(indexed), dtype=np.int64)
        else:
            documents = np.asarray(document_ids, dtype=np.int64).reshape(-1)
            if documents.size and (documents.min() < 0 or documents.max() >= len(indexed)):
                raise DatasetBuildError(
                    f"{indexed.prefix}: document_ids outside [0, {len(indexed)}) for dataset '{name}'"
                )

        fingerprint = dataset_fingerprint(indexed)
        key = hash_key(fingerprint + [self.seq_length, self.num_samples, self.seed, self.eod_id, documents])
        folder = cache_dir if cache_dir is not None else default_cache_dir(indexed.prefix)
        self._folder, self._fingerprint = folder, fingerprint
        self._cache = IndexCache(folder, f"{Path(indexed.prefix).name}-{name}-{key[:20]}")
        arrays = self._cache.load()
        self.cache_hit = arrays is not None
        if arrays is None:
            arrays = self._build(documents)
            self._cache.save(arrays, self._describe(documents))
        self.documents = arrays["documents"]  # [D] sequence ids that take part (empty ones dropped)
        self.needs_eod = arrays["needs_eod"]  # [D] bool: read a virtual EOD after this document
        self.document_order = arrays["document_order"]  # [E*D] positions into `documents`
        self.sample_index = arrays["sample_index"]  # [n+1, 2] (place, offset)
        self.shuffle_index = arrays["shuffle_index"]  # [n]
        self._lengths = np.asarray(indexed.sequence_lengths)

    def _describe(self, documents: np.ndarray) -> dict:
        return {
            "prefix": str(self.indexed.prefix),
            "name": self.name,
            "seq_length": self.seq_length,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "eod_id": self.eod_id,
            "num_documents": int(documents.size),
        }

    def _missing_eod_all(self) -> np.ndarray:
        """``documents_missing_eod`` over every document, cached on its own: it costs one pass
        over the .bin and depends only on the data, so other seeds, lengths and splits reuse it."""
        key = hash_key(self._fingerprint + ["missing-eod", self.eod_id])
        cache = IndexCache(self._folder, f"{Path(self.indexed.prefix).name}-eod-{key[:20]}")
        arrays = cache.load()
        if arrays is None:
            everything = np.arange(len(self.indexed), dtype=np.int64)
            arrays = {"missing_eod": documents_missing_eod(self.indexed, everything, self.eod_id)}
            cache.save(arrays, {"prefix": str(self.indexed.prefix), "eod_id": self.eod_id})
        return np.asarray(arrays["missing_eod"])

    def _build(self, documents: np.ndarray) -> dict[str, np.ndarray]:
        lengths = self.indexed.sequence_lengths[documents].astype(np.int64)
        if self.eod_id is not None:
            needs_eod = self._missing_eod_all()[documents]
        else:
            needs_eod = np.zeros(documents.size, dtype=bool)
        effective = lengths + needs_eod
        keep = effective > 0
        documents, needs_eod, effective = documents[keep], needs_eod[keep], effective[keep]
        total = int(effective.sum())
        if self.num_samples and total < self.seq_length + 1:
            raise DatasetBuildError(
                f"{self.indexed.prefix}: dataset '{self.name}' has {total} tokens in {documents.size} "
                f"documents, fewer than one sample of seq_length+1 = {self.seq_length + 1}; "
                "use more data or a shorter seq_length"
            )
        order, sample_index, shuffle = build_sample_indices(effective, self.seq_length, self.num_samples, self.seed)
        return {
            "documents": documents.astype(_smallest_int_dtype(len(self.indexed))),
            "needs_eod": needs_eod,
            "document_order": order,
            "sample_index": sample_index,
            "shuffle_index": shuffle,
        }

    def __len__(self) -> int:
        return self.num_samples

    @property
    def num_epochs(self) -> int:
        return self.document_order.size // max(1, self.documents.size)

    def stream_sample(self, k: int) -> np.ndarray:
        """Sample ``k`` of the unshuffled stream (tests and debugging)."""
        place, offset = (int(v) for v in self.sample_index[k])
        out = np.empty(self.seq_length + 1, dtype=np.int64)
        filled = 0
        while filled < out.size:
            doc_pos = int(self.document_order[place])
            doc = int(self.documents[doc_pos])
            length = int(self._lengths[doc])
            take = min(max(length - offset, 0), out.size - filled)
            if take:
                out[filled : filled + take] = self.indexed.get(doc, offset, take)
                filled += take
            if filled < out.size and self.needs_eod[doc_pos]:
                out[filled] = self.eod_id
                filled += 1
            place, offset = place + 1, 0
        return out

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.num_samples} samples")
        return self.stream_sample(int(self.shuffle_index[index]))

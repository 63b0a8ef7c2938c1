"""From the ``data`` config section to per-rank micro-batches.

``build_datasets`` turns ``data.train`` / ``data.valid`` (a prefix, or ``[weight, prefix]``
pairs) into one GPTDataset or a BlendedDataset of them. ``MicroBatchLoader`` walks the already
shuffled dataset in global order and hands each data-parallel rank its slice; its position is a
single global count (``consumed_samples``), so a resumed run sees exactly the batches it would
have seen, and that holds even if the data-parallel size changes between runs.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import numpy as np
import torch

from megasparse.data.blended_dataset import BlendedDataset, blend_counts
from megasparse.data.gpt_dataset import DatasetBuildError, GPTDataset, default_cache_dir
from megasparse.data.indexed_dataset import IndexedDataset

logger = logging.getLogger(__name__)


def parse_blend(entries: Sequence, field: str) -> tuple[list[str], Optional[list[float]]]:
    """``["p"]``, ``["p1", "p2"]`` or ``[[w1, "p1"], [w2, "p2"]]`` → (prefixes, weights or None).

    Unweighted lists mean "all of these as one corpus": the builder weights them by tokens.
    """
    prefixes: list[str] = []
    weights: list[float] = []
    for entry in entries:
        if isinstance(entry, str):
            prefixes.append(entry)
        elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str):
            weights.append(float(entry[0]))
            prefixes.append(entry[1])
        else:
            raise DatasetBuildError(f"{field}: entry {entry!r} is neither a prefix nor a [weight, prefix] pair")
    if weights and len(weights) != len(prefixes):
        raise DatasetBuildError(f"{field}: mixes weighted and unweighted prefixes; give every prefix a weight")
    if any(w < 0 for w in weights) or (weights and sum(weights) <= 0):
        raise DatasetBuildError(f"{field}: weights must be >= 0 and not all zero, got {weights}")
    return prefixes, (weights or None)


class _Source:
    """One prefix with the documents that a split uses."""

    def __init__(self, prefix: str, indexed: IndexedDataset, documents: np.ndarray):
        self.prefix, self.indexed, self.documents = prefix, indexed, documents

    @property
    def num_tokens(self) -> int:
        return int(self.indexed.sequence_lengths[self.documents].sum(dtype=np.int64))


def _open(prefix: str) -> IndexedDataset:
    return IndexedDataset(prefix)  # IndexedDatasetError names the missing/corrupt file


def _split_last_fraction(prefix: str, indexed: IndexedDataset, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train documents, valid documents): the valid set is the LAST ``fraction`` of documents."""
    n = len(indexed)
    n_valid = max(1, int(round(n * fraction)))
    if n_valid >= n:
        raise DatasetBuildError(
            f"{prefix}: {n} documents cannot be split with data.valid_fraction={fraction}; "
            "use more documents or a separate data.valid"
        )
    docs = np.arange(n, dtype=np.int64)
    return docs[: n - n_valid], docs[n - n_valid :]


def _build_split(
    sources: list[_Source],
    weights: Optional[list[float]],
    num_samples: int,
    seq_length: int,
    seed: int,
    eod_id: Optional[int],
    cache_dir: Optional[str],
    name: str,
):
    if len(sources) == 1:
        src = sources[0]
        return GPTDataset(src.indexed, seq_length, num_samples, seed, eod_id, src.documents, cache_dir, name)
    if weights is None:
        weights = [float(s.num_tokens) for s in sources]
    counts = blend_counts(weights, num_samples)
    children = [
        GPTDataset(s.indexed, seq_length, count, seed, eod_id, s.documents, cache_dir, name)
        for s, count in zip(sources, counts)
    ]
    blend_cache = cache_dir if cache_dir is not None else default_cache_dir(sources[0].prefix)
    return BlendedDataset(children, weights, num_samples, seed, cache_dir=blend_cache)


def build_datasets(
    data_cfg, seed: int, train_samples: int, valid_samples: int, eod_id: Optional[int]
) -> tuple[Union[GPTDataset, BlendedDataset], Optional[Union[GPTDataset, BlendedDataset]]]:
    """(train dataset, valid dataset or None) for a ``DataConfig``.

    Validation data comes from ``data.valid`` when given, else (``data.valid_fraction > 0``) from
    the last fraction of each train prefix's documents, so train and valid never share a
    document. Errors name the offending prefix.
    """
    if not data_cfg.train:
        raise DatasetBuildError("data.train is empty; give a dataset prefix (path without .bin/.idx)")
    seq, cache = data_cfg.seq_length, data_cfg.cache_dir
    train_prefixes, train_weights = parse_blend(data_cfg.train, "data.train")
    opened = {p: _open(p) for p in train_prefixes}

    train_sources, valid_sources = [], []
    valid_weights: Optional[list[float]] = None
    split_train = not data_cfg.valid and data_cfg.valid_fraction > 0
    for p in train_prefixes:
        if split_train:
            train_docs, valid_docs = _split_last_fraction(p, opened[p], data_cfg.valid_fraction)
            valid_sources.append(_Source(p, opened[p], valid_docs))
        else:
            train_docs = np.arange(len(opened[p]), dtype=np.int64)
        train_sources.append(_Source(p, opened[p], train_docs))
    if split_train:
        valid_weights = train_weights
    elif data_cfg.valid:
        valid_prefixes, valid_weights = parse_blend(data_cfg.valid, "data.valid")
        for p in valid_prefixes:
            indexed = opened.get(p) or _open(p)
            valid_sources.append(_Source(p, indexed, np.arange(len(indexed), dtype=np.int64)))

    train = _build_split(train_sources, train_weights, train_samples, seq, seed, eod_id, cache, "train")
    valid = None
    if valid_sources and valid_samples > 0:
        valid = _build_split(valid_sources, valid_weights, valid_samples, seq, seed, eod_id, cache, "valid")
    return train, valid


class MicroBatchLoader:
    """Endless iterator of ``torch.LongTensor`` micro-batches ``[micro_batch_size, seq_length + 1]``.

    Global micro-step g takes the ``micro_batch_size * dp_size`` consecutive dataset samples
    starting at ``consumed_samples``; rank r gets the r-th block of ``micro_batch_size``. The
    dataset is already shuffled, so consecutive is random. Past the end it wraps around.
    """

    def __init__(self, dataset, micro_batch_size: int, dp_rank: int, dp_size: int, consumed_samples: int = 0):
        if len(dataset) == 0:
            raise ValueError("MicroBatchLoader needs a non-empty dataset")
        if micro_batch_size <= 0 or dp_size <= 0 or not 0 <= dp_rank < dp_size:
            raise ValueError(
                f"bad loader layout: micro_batch_size={micro_batch_size} dp_rank={dp_rank} dp_size={dp_size}"
            )
        self.dataset = dataset
        self.micro_batch_size = int(micro_batch_size)
        self.dp_rank = int(dp_rank)
        self.dp_size = int(dp_size)
        self.consumed_samples = int(consumed_samples)

    @property
    def global_micro_batch(self) -> int:
        return self.micro_batch_size * self.dp_size

    def __iter__(self) -> "MicroBatchLoader":
        return self

    def __next__(self) -> torch.Tensor:
        first = self.consumed_samples + self.dp_rank * self.micro_batch_size
        indices = (first + np.arange(self.micro_batch_size)) % len(self.dataset)
        batch = np.stack([np.asarray(self.dataset[int(i)], dtype=np.int64) for i in indices])  # [b, s+1]
        self.consumed_samples += self.global_micro_batch
        return torch.from_numpy(batch)

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if "consumed_samples" not in state:
            raise ValueError(f"loader state has no 'consumed_samples' (keys: {sorted(state)})")
        saved_len = state.get("num_samples")
        if saved_len is not None and saved_len != len(self.dataset):
            # Not fatal (e.g. the run was extended), but the sample order is no longer the same.
            logger.warning(
                "resuming a loader saved over %d samples on a dataset of %d (train.steps changed?): the "
                "samples after the resume point come from a new shuffle, so some may repeat samples already "
                "seen and others be skipped; resume with the original train.steps to continue the same order",
                saved_len,
                len(self.dataset),
            )
        self.consumed_samples = int(state["consumed_samples"])

"""build_datasets from a DataConfig, and MicroBatchLoader's DP sharding and exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megasparse.config import DataConfig
from megasparse.data.blended_dataset import BlendedDataset
from megasparse.data.gpt_dataset import DatasetBuildError, GPTDataset
from megasparse.data.indexed_dataset import IndexedDatasetError
from megasparse.data.loader import MicroBatchLoader, build_datasets


class ArrayDataset:
    """Sample i is a row of distinct numbers, so batches can be compared exactly."""

    def __init__(self, n: int, width: int = 5):
        self.rows = np.random.default_rng(0).permutation(n * width).reshape(n, width)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def test_dp_ranks_partition_the_single_rank_stream():
    data = ArrayDataset(37)
    mbs, dp, steps = 2, 3, 9  # 9 * 6 = 54 samples: wraps past the end of the 37
    single = MicroBatchLoader(data, mbs * dp, 0, 1)
    ranks = [MicroBatchLoader(data, mbs, r, dp) for r in range(dp)]
    for _ in range(steps):
        reference = next(single)
        parts = [next(loader) for loader in ranks]
        for part in parts:
            assert part.dtype == torch.int64 and part.shape == (mbs, 5)
        torch.testing.assert_close(torch.cat(parts), reference)
    assert all(loader.consumed_samples == steps * mbs * dp for loader in ranks)


def test_resume_yields_exactly_the_next_batches():
    data = ArrayDataset(23)
    uninterrupted = MicroBatchLoader(data, 3, 1, 2)
    batches = [next(uninterrupted) for _ in range(12)]
    first = MicroBatchLoader(data, 3, 1, 2)
    for _ in range(5):
        next(first)
    state = first.state_dict()
    resumed = MicroBatchLoader(data, 3, 1, 2)
    resumed.load_state_dict(state)
    assert resumed.consumed_samples == 5 * 6
    for expected in batches[5:]:
        torch.testing.assert_close(next(resumed), expected)


def _write(write_dataset, random_documents, name, seed, count=40):
    return write_dataset(name, random_documents(seed=seed, count=count, low=5, high=30)).prefix


def test_single_prefix_with_held_out_documents(write_dataset, random_documents, tmp_path):
    prefix = _write(write_dataset, random_documents, "one", 50)
    cfg = DataConfig(train=[prefix], seq_length=16, valid_fraction=0.25, cache_dir=str(tmp_path / "c"))
    train, valid = build_datasets(cfg, seed=3, train_samples=30, valid_samples=6, eod_id=0)
    assert isinstance(train, GPTDataset) and isinstance(valid, GPTDataset)
    assert len(train) == 30 and len(valid) == 6
    np.testing.assert_array_equal(np.sort(valid.documents), np.arange(30, 40))  # the last quarter
    assert set(train.documents.tolist()).isdisjoint(valid.documents.tolist())
    loader = MicroBatchLoader(train, 2, 0, 1)
    assert next(loader).shape == (2, 17)


def test_weighted_blend_and_separate_valid(write_dataset, random_documents, tmp_path):
    a = _write(write_dataset, random_documents, "a", 51)
    b = _write(write_dataset, random_documents, "b", 52)
    cfg = DataConfig(train=[[0.75, a], [0.25, b]], valid=[b], seq_length=8, cache_dir=str(tmp_path / "c"))
    train, valid = build_datasets(cfg, seed=3, train_samples=40, valid_samples=5, eod_id=0)
    assert isinstance(train, BlendedDataset) and len(train) == 40
    assert [len(d) for d in train.datasets] == [30, 10]  # each child asked for exactly what it serves
    assert isinstance(valid, GPTDataset) and valid.indexed.prefix == b
    no_valid = DataConfig(train=[a], seq_length=8, cache_dir=str(tmp_path / "c"))
    assert build_datasets(no_valid, 3, 10, 5, 0)[1] is None


def test_errors_name_the_prefix(write_dataset, random_documents, tmp_path):
    with pytest.raises(IndexedDatasetError, match="missing_corpus"):
        build_datasets(DataConfig(train=[str(tmp_path / "missing_corpus")]), 1, 10, 0, 0)
    small = write_dataset("small_corpus", [np.array([1, 2, 3])]).prefix
    with pytest.raises(DatasetBuildError, match="small_corpus"):
        build_datasets(DataConfig(train=[small], seq_length=64, cache_dir=str(tmp_path / "c")), 1, 10, 0, 0)
    with pytest.raises(DatasetBuildError, match="small_corpus"):
        build_datasets(DataConfig(train=[small], valid_fraction=0.5, cache_dir=str(tmp_path / "c")), 1, 10, 2, 0)

"""Shared helpers for the data tests: random token documents written as .bin/.idx."""

from __future__ import annotations

import numpy as np
import pytest
from corpus_fixtures import hf_tokenizer_dir, spm_model  # noqa: F401  (session fixtures for every data test)

from megasparse.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter


def random_documents(seed: int, count: int, low: int = 1, high: int = 40, vocab: int = 1000) -> list[np.ndarray]:
    """``count`` documents of random lengths in ``[low, high)`` with token ids in ``[1, vocab)`` (0 is EOD)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=int(rng.integers(low, high))) for _ in range(count)]


@pytest.fixture(name="random_documents")
def random_documents_fixture():
    """The ``random_documents`` function (fixtures, not imports: test folders share no module names)."""
    return random_documents


@pytest.fixture
def write_dataset(tmp_path):
    """``write_dataset(name, docs, dtype=np.uint16) -> IndexedDataset`` in a per-test folder."""

    def write(name: str, docs, dtype=np.uint16) -> IndexedDataset:
        prefix = tmp_path / name
        with IndexedDatasetWriter(prefix, dtype) as writer:
            for doc in docs:
                writer.add_document(doc)
        return IndexedDataset(prefix)

    return write

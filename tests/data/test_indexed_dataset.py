"""Our .bin/.idx against megatron-core's own reader and writer, and the reader's error messages."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
import torch

from megasparse.data.indexed_dataset import (
    IndexedDataset,
    IndexedDatasetError,
    IndexedDatasetWriter,
    data_file_path,
    index_file_path,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets import indexed_dataset as mcore


@pytest.mark.parametrize("dtype,vocab", [(np.uint16, 65000), (np.int32, 150_000)])
def test_megatron_reads_our_files(write_dataset, random_documents, dtype, vocab):
    docs = random_documents(seed=1, count=37, low=0, high=50, vocab=vocab)
    ours = write_dataset("ours", docs, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = mcore.IndexedDataset(ours.prefix)
    assert len(theirs) == len(docs)
    np.testing.assert_array_equal(theirs.sequence_lengths, [d.size for d in docs])
    np.testing.assert_array_equal(theirs.document_indices, np.arange(len(docs) + 1))
    for i, doc in enumerate(docs):
        got = theirs[i]
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, doc)
    # A slice through megatron's get() hits the same bytes as ours.
    longest = int(np.argmax([d.size for d in docs]))
    np.testing.assert_array_equal(theirs.get(longest, offset=2, length=5), ours.get(longest, 2, 5))


def test_we_read_megatron_files(tmp_path, random_documents):
    docs = random_documents(seed=2, count=25, low=1, high=60, vocab=60000)
    prefix = str(tmp_path / "theirs")
    builder = mcore.IndexedDatasetBuilder(data_file_path(prefix), dtype=np.uint16)
    for doc in docs:
        builder.add_item(torch.from_numpy(doc.astype(np.int64)))
        builder.end_document()
    builder.finalize(index_file_path(prefix))
    ours = IndexedDataset(prefix)
    assert ours.dtype == np.uint16 and len(ours) == len(docs)
    np.testing.assert_array_equal(ours.document_indices, np.arange(len(docs) + 1))
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(ours[i], doc)
    assert ours.num_tokens == sum(d.size for d in docs)


def _corrupt_idx(prefix, offset: int, payload: bytes) -> None:
    path = index_file_path(prefix)
    raw = bytearray(open(path, "rb").read())
    raw[offset : offset + len(payload)] = payload
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize(
    "damage,words,bad_file",
    [
        (lambda p: _corrupt_idx(p, 0, b"TNTIDX\x00\x00\x00"), "magic", ".idx"),
        (lambda p: _corrupt_idx(p, 9, struct.pack("<Q", 2)), "version", ".idx"),
        (lambda p: _corrupt_idx(p, 17, bytes([9])), "dtype code", ".idx"),
        (lambda p: open(index_file_path(p), "r+b").truncate(60), "truncated", ".idx"),
        (lambda p: open(data_file_path(p), "r+b").truncate(11), "truncated", ".bin"),
    ],
    ids=["magic", "version", "dtype", "short-idx", "short-bin"],
)
def test_reader_errors_name_the_file(write_dataset, random_documents, damage, words, bad_file):
    ds = write_dataset("victim", random_documents(seed=3, count=10, low=5, high=20))
    prefix = ds.prefix
    del ds
    damage(prefix)
    with pytest.raises(IndexedDatasetError) as err:
        IndexedDataset(prefix)
    message = str(err.value)
    assert f"{prefix}{bad_file}" in message and words in message


def test_missing_files_are_named(tmp_path):
    with pytest.raises(IndexedDatasetError, match="nothing_here.idx"):
        IndexedDataset(tmp_path / "nothing_here")


def test_writer_refuses_out_of_range_tokens(tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        with IndexedDatasetWriter(tmp_path / "x", np.uint16) as writer:
            writer.add_document(np.array([1, 70000]))
    assert not (tmp_path / "x.idx").exists()


def test_a_bin_paired_with_another_datasets_idx_is_refused(write_dataset, random_documents):
    """A large .bin with a small dataset's .idx used to train silently on the first part of it."""
    import shutil

    big = write_dataset("big", random_documents(seed=4, count=50, low=5, high=20))
    small = write_dataset("small", random_documents(seed=5, count=5, low=5, high=20))
    shutil.copy(index_file_path(small.prefix), index_file_path(big.prefix))
    with pytest.raises(IndexedDatasetError) as err:
        IndexedDataset(big.prefix)
    message = str(err.value)
    assert message.startswith(f"{data_file_path(big.prefix)}: ") and "do not belong together" in message
    assert f"describes {len(small):,} sequences of uint16" in message

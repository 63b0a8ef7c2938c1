"""GPTDataset: sample cutting, EOD handling, seeded shuffling across epochs, the index cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from megasparse.data.gpt_dataset import DatasetBuildError, GPTDataset

EOD = 0


def stream_of(ds: GPTDataset) -> np.ndarray:
    """The unshuffled token stream the samples were cut from (one token of overlap removed)."""
    parts = [ds.stream_sample(k)[:-1] for k in range(len(ds))]
    return np.concatenate(parts + [ds.stream_sample(len(ds) - 1)[-1:]])


def joined(docs, order, documents, eod=None) -> np.ndarray:
    pieces = []
    for pos in order:
        doc = docs[int(documents[pos])]
        pieces.append(doc)
        if eod is not None and doc.size and doc[-1] != eod:
            pieces.append(np.array([eod]))
    return np.concatenate(pieces)


def test_samples_are_windows_of_the_eod_joined_stream(write_dataset, random_documents, tmp_path):
    docs = random_documents(seed=10, count=30, low=1, high=25)
    ds = GPTDataset(
        write_dataset("a", docs), seq_length=16, num_samples=90, seed=5, eod_id=EOD, cache_dir=str(tmp_path / "cache")
    )
    assert len(ds) == 90 and ds.num_epochs >= 2
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.dtype == np.int64 and sample.shape == (17,)
    stream = stream_of(ds)
    expected = joined(docs, ds.document_order, ds.documents, eod=EOD)
    np.testing.assert_array_equal(stream, expected[: stream.size])
    # Consecutive stream samples overlap by exactly one token.
    assert ds.stream_sample(3)[-1] == ds.stream_sample(4)[0]


def test_existing_eod_is_not_doubled_and_none_means_no_separator(write_dataset, random_documents, tmp_path):
    docs = [np.append(d, EOD) for d in random_documents(seed=11, count=20, low=1, high=15)]
    indexed = write_dataset("with_eod", docs)
    with_eod = GPTDataset(indexed, 8, 30, seed=1, eod_id=EOD, cache_dir=str(tmp_path / "c1"))
    assert not with_eod.needs_eod.any()
    without = GPTDataset(indexed, 8, 30, seed=1, eod_id=None, cache_dir=str(tmp_path / "c2"))
    for ds in (with_eod, without):
        stream = stream_of(ds)
        np.testing.assert_array_equal(stream, joined(docs, ds.document_order, ds.documents)[: stream.size])


def test_empty_documents_contribute_nothing(write_dataset, random_documents, tmp_path):
    docs = random_documents(seed=12, count=12, low=3, high=10)
    docs[4] = np.array([], dtype=np.int64)
    ds = GPTDataset(write_dataset("holes", docs), 4, 20, seed=2, eod_id=EOD, cache_dir=str(tmp_path / "c"))
    assert 4 not in set(ds.documents.tolist()) and ds.documents.size == 11
    stream = stream_of(ds)
    assert not np.any((stream[:-1] == EOD) & (stream[1:] == EOD))  # never a lone EOD


def test_seed_determines_the_order(write_dataset, random_documents, tmp_path):
    indexed = write_dataset("s", random_documents(seed=13, count=40))
    make = lambda seed, sub: GPTDataset(indexed, 12, 50, seed=seed, eod_id=EOD, cache_dir=str(tmp_path / sub))
    a, b, c = make(7, "x"), make(7, "y"), make(8, "z")
    assert not b.cache_hit  # separate folders: b was rebuilt, not read from a's cache
    np.testing.assert_array_equal(np.stack([a[i] for i in range(50)]), np.stack([b[i] for i in range(50)]))
    assert not np.array_equal(np.stack([a[i] for i in range(50)]), np.stack([c[i] for i in range(50)]))


def test_every_epoch_covers_all_documents_once(write_dataset, random_documents, tmp_path):
    seq = 8
    docs = random_documents(seed=14, count=25, low=2, high=20, vocab=50)
    total = sum(d.size + 1 for d in docs)  # with one EOD each
    docs[0] = np.concatenate([docs[0], np.full((-total) % seq, 7)])  # make an epoch a whole number of samples
    per_epoch = sum(d.size + 1 for d in docs) // seq
    ds = GPTDataset(write_dataset("ep", docs), seq, 3 * per_epoch, seed=3, eod_id=EOD, cache_dir=str(tmp_path / "c"))
    assert ds.num_epochs == 4  # 3 epochs of samples + the one token the last sample reaches into
    rows = ds.document_order.reshape(ds.num_epochs, -1)
    for row in rows:
        assert sorted(row.tolist()) == list(range(len(docs)))
    assert not np.array_equal(rows[0], rows[1])  # reshuffled per epoch
    expected_counts = np.bincount(np.concatenate(docs + [np.zeros(len(docs), np.int64)]), minlength=50)
    for epoch in range(3):
        # Samples are shuffled within their epoch: dataset positions of epoch e hold exactly its tokens.
        block = np.concatenate([ds[i][:-1] for i in range(epoch * per_epoch, (epoch + 1) * per_epoch)])
        np.testing.assert_array_equal(np.bincount(block, minlength=50), expected_counts)
    assert sorted(ds.shuffle_index[:per_epoch].tolist()) == list(range(per_epoch))


def test_document_subset(write_dataset, random_documents, tmp_path):
    docs = random_documents(seed=15, count=30, vocab=5000)
    subset = np.arange(10, 20)
    ds = GPTDataset(
        write_dataset("sub", docs),
        10,
        40,
        seed=4,
        eod_id=EOD,
        document_ids=subset,
        cache_dir=str(tmp_path / "c"),
        name="valid",
    )
    np.testing.assert_array_equal(np.sort(ds.documents), subset)
    allowed = set(np.concatenate([docs[i] for i in subset]).tolist()) | {EOD}
    seen = set(np.concatenate([ds[i] for i in range(len(ds))]).tolist())
    assert seen <= allowed
    full = GPTDataset(ds.indexed, 10, 40, seed=4, eod_id=EOD, cache_dir=str(tmp_path / "c"), name="valid")
    assert not full.cache_hit  # the subset is part of the cache key


def test_cache_is_reused_and_damage_is_never_used(write_dataset, random_documents, tmp_path):
    indexed = write_dataset("cached", random_documents(seed=16, count=50))
    cache = tmp_path / "cache"
    first = GPTDataset(indexed, 16, 60, seed=9, eod_id=EOD, cache_dir=str(cache))
    reference = np.stack([first[i] for i in range(60)])
    files = sorted(cache.iterdir())
    assert not first.cache_hit and any(f.suffix == ".json" for f in files)
    mtimes = {f: f.stat().st_mtime_ns for f in files}

    second = GPTDataset(indexed, 16, 60, seed=9, eod_id=EOD, cache_dir=str(cache))
    assert second.cache_hit
    assert {f: f.stat().st_mtime_ns for f in sorted(cache.iterdir())} == mtimes  # read, not rewritten
    np.testing.assert_array_equal(np.stack([second[i] for i in range(60)]), reference)

    # A crashed writer's leftover temp file (garbage) beside a missing manifest: rebuilt, not read.
    manifest = next(f for f in files if f.suffix == ".json" and "-train-" in f.name)
    shuffle_file = next(f for f in files if f.name.endswith("shuffle_index.npy"))
    manifest.unlink()
    (cache / (shuffle_file.name + ".tmp-999-deadbeef")).write_bytes(b"\x93NUMPY half written")
    third = GPTDataset(indexed, 16, 60, seed=9, eod_id=EOD, cache_dir=str(cache))
    assert not third.cache_hit
    np.testing.assert_array_equal(np.stack([third[i] for i in range(60)]), reference)

    # A truncated array under its final name (e.g. a bad copy): detected, rebuilt, repaired.
    data = shuffle_file.read_bytes()
    shuffle_file.write_bytes(data[: len(data) // 2])
    fourth = GPTDataset(indexed, 16, 60, seed=9, eod_id=EOD, cache_dir=str(cache))
    assert not fourth.cache_hit
    np.testing.assert_array_equal(np.stack([fourth[i] for i in range(60)]), reference)
    assert GPTDataset(indexed, 16, 60, seed=9, eod_id=EOD, cache_dir=str(cache)).cache_hit


def test_default_cache_beside_data_and_unwritable_fallback(write_dataset, random_documents, tmp_path):
    indexed = write_dataset("beside", random_documents(seed=17, count=20))
    GPTDataset(indexed, 8, 10, seed=1, eod_id=EOD)
    assert any(Path(f"{indexed.prefix}_cache").glob("*.json"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    ds = GPTDataset(indexed, 8, 10, seed=1, eod_id=EOD, cache_dir=str(blocker / "cache"))
    assert not ds.cache_hit and ds[3].shape == (9,)
    assert not os.path.exists(blocker / "cache")


def test_too_little_data_names_the_prefix(write_dataset, tmp_path):
    indexed = write_dataset("tiny", [np.array([5, 6, 7])])
    with pytest.raises(DatasetBuildError, match="tiny.*fewer than one sample"):
        GPTDataset(indexed, 8, 4, seed=1, eod_id=EOD, cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize("chunk_tokens", [64, 1 << 25], ids=["sequential-chunks", "memmap-gather"])
def test_eod_check_reads_the_right_last_tokens(write_dataset, random_documents, tmp_path, monkeypatch, chunk_tokens):
    import megasparse.data.gpt_dataset as gpt

    monkeypatch.setattr(gpt, "_CHUNK_TOKENS", chunk_tokens)
    eod = 1  # tokens are in [1, 6): about a fifth of the documents end with it by chance
    docs = random_documents(seed=18, count=200, low=1, high=12, vocab=6)
    docs = [np.append(d, eod) if i % 3 == 0 else d for i, d in enumerate(docs)]
    indexed = write_dataset("eod_check", docs)
    subset = np.arange(5, 200, 2)
    truth = np.array([docs[i][-1] != eod for i in subset])
    assert 0 < truth.sum() < truth.size
    np.testing.assert_array_equal(gpt.documents_missing_eod(indexed, subset, eod), truth)

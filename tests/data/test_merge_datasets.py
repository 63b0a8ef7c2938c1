"""tools/merge_datasets.py: the merged dataset is the concatenation of its inputs."""

from __future__ import annotations

import numpy as np

from megasparse.cli.merge import main
from megasparse.data.indexed_dataset import IndexedDataset


def test_merge_equals_concatenation(write_dataset, random_documents, tmp_path, capsys):
    parts = [random_documents(seed=60 + k, count=5 + 3 * k, low=0, high=20) for k in range(3)]
    prefixes = [write_dataset(f"shard{k}", docs).prefix for k, docs in enumerate(parts)]
    out = tmp_path / "merged" / "all"
    assert main(["--input", *prefixes, "--output-prefix", str(out)]) == 0
    merged = IndexedDataset(out)
    expected = [d for docs in parts for d in docs]
    assert len(merged) == len(expected) and merged.dtype == np.uint16
    np.testing.assert_array_equal(merged.document_indices, np.arange(len(expected) + 1))
    for i, doc in enumerate(expected):
        np.testing.assert_array_equal(merged[i], doc)
    summary = capsys.readouterr().out
    assert f"{len(expected)} documents" in summary and f"{sum(d.size for d in expected)} tokens" in summary


def test_input_dir_merges_sorted_prefixes(random_documents, tmp_path):
    from megasparse.data.indexed_dataset import IndexedDatasetWriter

    shards = tmp_path / "shards"
    docs = {name: random_documents(seed=70 + i, count=4) for i, name in enumerate(["b", "a", "c"])}
    for name, ds in docs.items():
        with IndexedDatasetWriter(shards / name, np.int32) as w:
            for d in ds:
                w.add_document(d)
    assert main(["--input-dir", str(shards), "--output-prefix", str(tmp_path / "out")]) == 0
    merged = IndexedDataset(tmp_path / "out")
    expected = docs["a"] + docs["b"] + docs["c"]
    assert merged.dtype == np.int32
    for i, doc in enumerate(expected):
        np.testing.assert_array_equal(merged[i], doc)


def test_mismatched_dtypes_fail_with_one_line(write_dataset, random_documents, tmp_path, capsys):
    small = write_dataset("u16", random_documents(seed=80, count=3), np.uint16).prefix
    wide = write_dataset("i32", random_documents(seed=81, count=3), np.int32).prefix
    assert main(["--input", small, wide, "--output-prefix", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different token dtypes" in err and "i32" in err
    assert not (tmp_path / "out.idx").exists() and not (tmp_path / "out.bin").exists()


def test_missing_input_is_named(tmp_path, capsys):
    assert main(["--input", str(tmp_path / "nope"), "--output-prefix", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nope.idx" in err and "Traceback" not in err

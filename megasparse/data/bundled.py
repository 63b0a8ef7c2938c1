"""The small public-domain corpus shipped inside the package.

About 10 M characters of English (State of the Union addresses, Project Gutenberg books and
Botchan) in ~4 KB documents, as gzip jsonl with one ``{"id", "source", "lang", "text"}`` object
per line, split into ``train`` and a ~5% ``valid`` hold-out that shares no document with train.
It lets the quickstart, the tests and tokenizer training run with no download. Sources,
licences and how it was built: ``megasparse/resources/corpus/ATTRIBUTION.md``; rebuild with
``examples/data/build_bundled_corpus.py``.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path
from typing import Iterator

SPLITS = ("train", "valid")


def bundled_corpus_dir() -> Path:
    """Folder holding the bundled corpus, found through the installed package (not the CWD)."""
    folder = resources.files("megasparse") / "resources" / "corpus"
    path = Path(str(folder))
    # Zip-imported packages have no real folder; the data tools need real files to open by name.
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path}: bundled corpus folder not found; megasparse must be "
            f"installed from a source tree or wheel that includes "
            f"megasparse/resources/corpus (package data)"
        )
    return path


def bundled_corpus_files() -> dict[str, Path]:
    """``{"train": .../train.jsonl.gz, "valid": .../valid.jsonl.gz}``; every path exists."""
    folder = bundled_corpus_dir()
    files = {split: folder / f"{split}.jsonl.gz" for split in SPLITS}
    for split, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: bundled {split} split missing; reinstall megasparse "
                f"or rebuild it with examples/data/build_bundled_corpus.py"
            )
    return files


def bundled_corpus_manifest() -> dict:
    """Counts and hashes recorded by the build script (``manifest.json``)."""
    return json.loads((bundled_corpus_dir() / "manifest.json").read_text(encoding="utf-8"))


def iter_bundled_documents(split: str = "train") -> Iterator[dict]:
    """Yield the documents of one split in file order."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} unknown; choose one of {', '.join(SPLITS)}")
    with gzip.open(bundled_corpus_files()[split], "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def describe_bundled_corpus() -> str:
    """A few lines for users: what the corpus is, where it is, how big each split is."""
    manifest = bundled_corpus_manifest()
    lines = [f"bundled corpus (public domain, English) in {bundled_corpus_dir()}"]
    for split in SPLITS:
        info = manifest["files"][f"{split}.jsonl.gz"]
        sources = ", ".join(f"{name} {v['docs']}" for name, v in info["per_source"].items())
        lines.append(
            f"  {split}: {info['docs']:,} documents, {info['chars'] / 1e6:.2f} M chars, "
            f"{info['bytes'] / 1e6:.2f} MB gzip ({sources})"
        )
    lines.append("  sources and licences: ATTRIBUTION.md in the same folder")
    return "\n".join(lines)

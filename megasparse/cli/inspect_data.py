"""Show what a token file holds: documents, token counts, the largest id, and decoded samples."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from megasparse.cli.common import command_parser
from megasparse.config import TOKENIZER_TYPE_NAMES

EPILOG = """\
examples:
  # counts, the largest id and the first 3 documents decoded with the tokenizer the report names
  megasparse inspect data/corpus_text_document
  # documents 100-104 with a given tokenizer, 64 tokens of each
  megasparse inspect data/corpus_text_document --tokenizer-model tok.model --start 100 --documents 5 \\
      --max-tokens 64

The largest id and the tokenizer come from the preprocessing report ({prefix}_report.json) when
it records them; otherwise the .bin is scanned and the tokenizer is unknown (give
--tokenizer-model to decode). exit status: 0 ok, 2 bad input.
"""


def build_parser(prog: str = "megasparse inspect") -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__, EPILOG)
    p.add_argument("prefix", metavar="PREFIX", help="a token file's path without .bin/.idx")
    p.add_argument("--tokenizer-model", help="tokenizer to decode with (default: the one the report records)")
    p.add_argument("--tokenizer-type", choices=TOKENIZER_TYPE_NAMES, help="default: inferred from the path")
    p.add_argument("--documents", type=int, default=3, metavar="N", help="documents to show (default 3)")
    p.add_argument("--start", type=int, default=0, metavar="I", help="first document to show (default 0)")
    p.add_argument("--max-tokens", type=int, default=200, metavar="T", help="tokens shown per document (default 200)")
    return p


def _decoder(args, recorded: Optional[dict]):
    """(tokenizer or None, a line saying which one decodes)."""
    from pathlib import Path

    from megasparse.data.tokenizer import load_tokenizer

    if args.tokenizer_model:
        tok = load_tokenizer(args.tokenizer_model, args.tokenizer_type)
        return tok, f"decoded with {args.tokenizer_model}"
    path = (recorded or {}).get("path")
    if path and Path(path).exists():
        return load_tokenizer(path, recorded.get("type")), f"decoded with {path} (recorded)"
    why = f"the recorded tokenizer {path} is not here" if path else "no tokenizer is recorded"
    return None, f"ids only: {why}; give --tokenizer-model to decode"


def _recorded_tokenizer_line(found, given) -> str:
    line = f"tokenizer   {found.describe_tokenizer()}"
    if found.tokenizer is None:
        return line + " (no report records it)"
    if given is not None:
        from megasparse.data.dataset_report import same_tokenizer

        same = same_tokenizer(found.tokenizer, given.identity())
        line += "; --tokenizer-model is the same file" if same else "; --tokenizer-model is a DIFFERENT tokenizer"
    return line


def inspect_lines(args) -> list[str]:
    import numpy as np

    from megasparse.data.dataset_report import dataset_vocabulary
    from megasparse.data.indexed_dataset import IndexedDataset, data_file_path

    ds = IndexedDataset(args.prefix)
    n = len(ds)
    lengths = np.asarray(ds.sequence_lengths, dtype=np.int64)
    size_mb = os.path.getsize(data_file_path(args.prefix)) / 1e6
    lines = [f"{args.prefix}: {n:,} documents, {ds.num_tokens:,} tokens, {ds.dtype} ({size_mb:,.1f} MB .bin)"]
    if n:
        lines.append(
            f"lengths     min {lengths.min():,}, median {int(np.median(lengths)):,}, mean {lengths.mean():,.1f}, "
            f"max {lengths.max():,} tokens"
        )
    found = dataset_vocabulary(args.prefix)
    source = "scanned from the .bin" if found.scanned else f"recorded in {found.report}"
    lines.append(f"largest id  {found.max_token_id:,} ({source})")
    tok, decode_note = _decoder(args, found.tokenizer)
    lines.append(_recorded_tokenizer_line(found, tok if args.tokenizer_model else None))
    if tok is not None and n:
        from megasparse.data.gpt_dataset import documents_missing_eod

        ending = int((lengths > 0).sum() - documents_missing_eod(ds, np.arange(n), tok.eod_id).sum())
        lines.append(
            f"EOD         id {tok.eod_id} ({tok.id_to_piece(tok.eod_id)!r}) ends {ending:,} of {n:,} documents"
        )
    lines.append(f"samples     {decode_note}")
    for i in range(args.start, min(args.start + args.documents, n)):
        ids = ds.get(i, 0, min(int(lengths[i]), args.max_tokens))
        cut = "" if ids.size == lengths[i] else f", first {ids.size}"
        lines.append("")
        lines.append(f"document {i:,}: {int(lengths[i]):,} tokens{cut}")
        lines.append(f"  ids:  {ids[:24].tolist()}{' ...' if ids.size > 24 else ''}")
        if tok is not None:
            lines.append(f"  text: {tok.decode(ids)!r}")
    return lines


def main(argv: Optional[Sequence[str]] = None, prog: str = "megasparse inspect") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    prog = parser.prog
    from megasparse.data.indexed_dataset import IndexedDatasetError
    from megasparse.data.tokenizer import TokenizerError

    try:
        if args.documents < 0 or args.start < 0 or args.max_tokens < 1:
            raise ValueError("--documents and --start must be >= 0 and --max-tokens >= 1")
        lines = inspect_lines(args)
    except (IndexedDatasetError, TokenizerError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

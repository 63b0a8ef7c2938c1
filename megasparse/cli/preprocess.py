"""Tokenize a corpus (jsonl/.gz/.zst, parquet, arrow) into Megatron-compatible .bin/.idx files."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from megasparse.cli.common import command_parser

EPILOG = """\
examples:
  # one jsonl file, documents separated by the tokenizer's <eod>, 8 workers
  megasparse preprocess --input corpus.jsonl --output-prefix data/corpus \\
      --tokenizer-model tok.model --append-eod --workers 8
  # -> data/corpus_text_document.bin/.idx and data/corpus_report.json

  # many compressed shards and parquet files, two fields, stop at the first bad record
  megasparse preprocess --input 'shards/*.jsonl.zst' extra.parquet \\
      --output-prefix data/web --tokenizer-model tok.model --json-keys text title --strict

Bad records (malformed_json, missing_key, not_a_string, invalid_utf8, empty_document) are
skipped and counted in the report; with --strict the first one stops the run (exit code 2)
and no output files are left behind. The output is byte-identical for any --workers.
"""


def build_parser(prog: str = "megasparse preprocess") -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__, EPILOG)
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="input files, glob patterns (quote them) or directories, read in the order given",
    )
    p.add_argument(
        "--output-prefix", required=True, help="outputs are {prefix}_{key}_document.bin/.idx and {prefix}_report.json"
    )
    p.add_argument("--tokenizer-model", required=True, help="SentencePiece .model file")
    p.add_argument(
        "--tokenizer-type",
        default="SentencePieceTokenizer",
        choices=["SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer"],
        help="accepted so that Megatron command lines run unchanged; every choice means the "
        "SentencePiece model given by --tokenizer-model",
    )
    p.add_argument(
        "--json-keys",
        nargs="+",
        default=["text"],
        help="fields (jsonl keys or parquet/arrow columns) to tokenize, one output each (default: text)",
    )
    p.add_argument(
        "--append-eod",
        action="store_true",
        help="append the end-of-document token (<eod>, or </s> for models without it) to every document",
    )
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (default: 1)")
    p.add_argument("--chunk-size", type=int, default=256, help="documents per worker task (default: 256)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record with file:line and exit code 2")
    p.add_argument(
        "--log-interval",
        type=int,
        default=0,
        help="also print a progress line every N documents (for logs without a terminal)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "megasparse preprocess") -> int:
    args = build_parser(prog).parse_args(argv)
    from megasparse.data.preprocess import preprocess, report_path
    from megasparse.data.readers import InputError
    from megasparse.data.tokenizer import TokenizerError

    try:
        report = preprocess(
            args.input,
            args.output_prefix,
            args.tokenizer_model,
            json_keys=args.json_keys,
            append_eod=args.append_eod,
            workers=args.workers,
            strict=args.strict,
            chunk_size=args.chunk_size,
            progress=not args.no_progress,
            log_interval=args.log_interval,
        )
    except (InputError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    for line in report.summary_lines():
        print(line)
    print(f"report: {report_path(args.output_prefix)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

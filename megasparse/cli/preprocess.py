"""Tokenize a corpus (jsonl/.gz/.zst, parquet, arrow) into Megatron-compatible .bin/.idx files."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from megasparse.cli.common import command_parser
from megasparse.config import TOKENIZER_TYPE_NAMES as TOKENIZER_TYPES

EPILOG = """\
examples:
  # one jsonl file, documents separated by the tokenizer's <eod>, 8 workers
  megasparse preprocess --input corpus.jsonl --output-prefix data/corpus \\
      --tokenizer-model tok.model --append-eod --workers 8
  # -> data/corpus_text_document.bin/.idx and data/corpus_report.json

  # many compressed shards and parquet files, two fields, stop at the first bad record
  megasparse preprocess --input 'shards/*.jsonl.zst' extra.parquet \\
      --output-prefix data/web --tokenizer-model tok.model --json-keys text title --strict

  # a Hugging Face tokenizer (Megatron's command line runs unchanged)
  megasparse preprocess --input corpus.jsonl --output-prefix data/corpus \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model hf-tokenizer/ --append-eod --workers 8

Tokenizers: a SentencePiece .model, or a Hugging Face tokenizer.json (the file, or a directory
holding it; the EOD token is tokenizer_config.json's eos_token, see docs/design.md §3.2). Text is
encoded without BOS or other special tokens; --append-eod adds the EOD token after each document.
{prefix}_report.json records the tokenizer (type, sha256, vocabulary) and the largest token id,
which training checks against model.vocab_size and data.tokenizer_model.

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
    p.add_argument(
        "--tokenizer-model",
        required=True,
        help="SentencePiece .model file, or a Hugging Face tokenizer.json (or a directory with one)",
    )
    p.add_argument(
        "--tokenizer-type",
        default=None,
        choices=TOKENIZER_TYPES,
        help="Megatron's names: HuggingFaceTokenizer reads a tokenizer.json, the others a SentencePiece "
        "model (default: inferred from --tokenizer-model: a directory or .json file is HuggingFaceTokenizer)",
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
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (a bar with the bytes read and an ETA on a terminal, a line every 30 s in a log)",
    )
    # Megatron's flags, so that its command lines run unchanged.
    p.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="Megatron's input splitting; accepted and not needed: the output equals Megatron's merged "
        "output, and --workers sets the parallelism",
    )
    p.add_argument("--split-sentences", action="store_true", help="refused: documents are tokenized whole")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "megasparse preprocess") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    prog = parser.prog
    if args.split_sentences:
        print(
            f"{prog}: error: --split-sentences is not supported: it needs NLTK's punkt splitter and writes one "
            "sequence per sentence, while training packs whole documents; drop the flag",
            file=sys.stderr,
        )
        return 2
    if args.partitions < 1:
        print(f"{prog}: error: --partitions must be at least 1, got {args.partitions}", file=sys.stderr)
        return 2
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
            tokenizer_type=args.tokenizer_type,
        )
    except (InputError, TokenizerError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
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

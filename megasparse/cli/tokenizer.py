"""Train a SentencePiece tokenizer (BPE or unigram) on jsonl/.gz/.zst, parquet, arrow or text files."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from megasparse.cli.common import command_parser

EPILOG = """\
examples:
  # 32k BPE with byte fallback on a sample of 10M lines of some jsonl shards
  megasparse tokenizer --input 'shards/*.jsonl.zst' --output-prefix tok/spm32k \\
      --vocab-size 32000 --num-threads 16
  # -> tok/spm32k.model and tok/spm32k.vocab

  # small unigram model on plain text files, every line used
  megasparse tokenizer --input books/*.txt --output-prefix tok/small \\
      --model-type unigram --vocab-size 4000 --input-sentence-size 0

special ids (defaults): unk=0 <unk>, bos=1 <s>, eos=2 </s>, pad=3 <pad>, eod=4 <eod>.
<eod> is a control symbol: only --append-eod in preprocessing produces it, never text.
Set an id to -1 to leave that piece out (unk must stay). The corpus is streamed into the
trainer; --input-sentence-size keeps a uniform random sample of that many lines in memory.
"""


def build_parser(prog: str = "megasparse tokenizer") -> argparse.ArgumentParser:
    from megasparse.data.tokenizer_training import MODEL_TYPES
    from megasparse.data.tokenizer_training import TokenizerTrainingConfig as C

    p = command_parser(prog, __doc__, EPILOG)
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="input files, glob patterns (quote them) or directories",
    )
    p.add_argument("--output-prefix", required=True, help="writes {prefix}.model and {prefix}.vocab")
    p.add_argument(
        "--json-keys",
        nargs="+",
        default=["text"],
        help="jsonl keys / parquet or arrow columns holding text (default: text)",
    )
    p.add_argument("--model-type", choices=MODEL_TYPES, default=C.model_type)
    p.add_argument("--vocab-size", type=int, default=C.vocab_size)
    p.add_argument(
        "--no-byte-fallback",
        dest="byte_fallback",
        action="store_false",
        help="map unknown characters to <unk> instead of UTF-8 byte pieces",
    )
    p.add_argument("--character-coverage", type=float, default=C.character_coverage)
    p.add_argument(
        "--input-sentence-size",
        type=int,
        default=C.input_sentence_size,
        help=f"lines sampled for training, 0 = all (default: {C.input_sentence_size:,})",
    )
    p.add_argument(
        "--no-shuffle",
        dest="shuffle",
        action="store_false",
        help="take the first --input-sentence-size lines instead of a random sample",
    )
    p.add_argument("--num-threads", type=int, default=C.num_threads)
    p.add_argument(
        "--max-sentence-length", type=int, default=C.max_sentence_length, help="bytes; longer lines are cut at spaces"
    )
    for name in ("unk", "bos", "eos", "pad", "eod"):
        p.add_argument(f"--{name}-id", type=int, default=getattr(C, f"{name}_id"))
    p.add_argument("--verbose", action="store_true", help="show SentencePiece's own log")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (a bar with the bytes read on a terminal, a line every 30 s in a log)",
    )
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "megasparse tokenizer") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    prog = parser.prog
    from megasparse.data.readers import InputError
    from megasparse.data.tokenizer import TokenizerError
    from megasparse.data.tokenizer_training import (
        TokenizerTrainingConfig,
        TokenizerTrainingError,
        reading_summary,
        train_tokenizer,
    )

    config = TokenizerTrainingConfig(
        model_type=args.model_type,
        vocab_size=args.vocab_size,
        byte_fallback=args.byte_fallback,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        shuffle_input_sentence=args.shuffle,
        num_threads=args.num_threads,
        max_sentence_length=args.max_sentence_length,
        unk_id=args.unk_id,
        bos_id=args.bos_id,
        eos_id=args.eos_id,
        pad_id=args.pad_id,
        eod_id=args.eod_id,
        verbose=args.verbose,
    )
    stats: dict = {}
    try:
        tok = train_tokenizer(
            args.input, args.output_prefix, args.json_keys, config, stats=stats, progress=not args.no_progress
        )
    except (InputError, TokenizerError, TokenizerTrainingError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    print(reading_summary(stats, args.json_keys))
    print(f"wrote {args.output_prefix}.model and {args.output_prefix}.vocab: {tok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

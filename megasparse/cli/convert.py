"""Convert checkpoints: between our TP x PP x DP layouts, and to or from other formats."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from megasparse.checkpoint.atomic_output import atomic_directory, check_destination
from megasparse.checkpoint.engine import CheckpointError
from megasparse.checkpoint.formats import INPUT_FORMATS, OUTPUT_FORMATS, ConvertRequest
from megasparse.cli.common import command_parser

EPILOG = """\
SRC is a checkpoint folder (.../global_stepN), a run's checkpoint directory (its newest
checkpoint is converted), or, with --to megasparse, a directory of another format that an
importer recognises. DST must not exist unless --overwrite is given; it is written under a
temporary name beside it and renamed when complete, so a failed conversion leaves nothing.

formats (--to):
{formats}

examples:
  # a TP2 x PP2 run continues on one GPU: reshard weights, Adam state and progress
  megasparse convert runs/a/ckpt runs/a-1gpu/ckpt --to megasparse --tp 1 --pp 1 --dp 1
  python -m megasparse.train --config runs/a/config.yaml --set checkpoint.dir=runs/a-1gpu/ckpt \\
      --set parallel.tensor=1 --set parallel.pipeline=1 --set checkpoint.resume=auto
  # consolidate a ZeRO-3 checkpoint into one process's layout (fp32 master weights)
  megasparse convert runs/b/ckpt/global_step5000 runs/b-plain --to megasparse

exit status: 0 ok, 2 bad input (one line on stderr naming the file and the problem).
"""


def _formats_text() -> str:
    width = max(map(len, OUTPUT_FORMATS))
    return "\n".join(f"  {name:<{width}}  {fmt.summary}" for name, fmt in OUTPUT_FORMATS.items())


def build_parser(prog: str = "megasparse convert") -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__, EPILOG.format(formats=_formats_text()))
    p.add_argument("source", metavar="SRC", type=Path, help="checkpoint folder or run checkpoint directory")
    p.add_argument("destination", metavar="DST", type=Path, help="output directory (must not exist)")
    p.add_argument("--to", required=True, choices=list(OUTPUT_FORMATS), help="output format")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists (only once DST.tmp is complete)")
    p.add_argument(
        "--dtype",
        default="source",
        choices=["source", "fp32", "bf16"],
        help="dtype of the written weights (default: as stored; fp32 masters stay fp32)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    seen: set[int] = set()
    for fmt in [*OUTPUT_FORMATS.values(), *INPUT_FORMATS.values()]:
        if fmt.add_arguments is not None and id(fmt.add_arguments) not in seen:
            seen.add(id(fmt.add_arguments))
            fmt.add_arguments(p.add_argument_group(f"{fmt.name} options"))
    return p


def _writer_for(args: argparse.Namespace):
    """The output format's writer, or an importer's when SRC is a foreign directory."""
    if args.to == "megasparse":
        for fmt in INPUT_FORMATS.values():
            if fmt.detect(args.source):
                return fmt.write
    return OUTPUT_FORMATS[args.to].write


def main(argv: Optional[Sequence[str]] = None, prog: str = "megasparse convert") -> int:
    args = build_parser(prog).parse_args(argv)
    request = ConvertRequest(
        source=args.source,
        destination=args.destination,
        to=args.to,
        dtype=args.dtype,
        show_progress=not args.no_progress,
        options=args,
    )
    try:
        if not args.source.exists():
            raise CheckpointError(f"{args.source}: no such checkpoint or directory")
        check_destination(args.destination, args.overwrite)  # before any work, not after
        write = _writer_for(args)
        with atomic_directory(args.destination, args.overwrite) as tmp:
            record = write(request, tmp)
    except CheckpointError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: error: {getattr(e, 'filename', '') or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"{prog}: wrote {args.destination} ({args.to})")
    if record:
        print(json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

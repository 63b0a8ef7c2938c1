"""Concatenate several .bin/.idx datasets (e.g. preprocessing shards) into one."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from megasparse.cli.common import command_parser

EPILOG = """examples:
  # merge two shards, in the given order
  megasparse merge --input data/shard0_text_document data/shard1_text_document \\
      --output-prefix data/corpus_text_document

  # merge every dataset in a folder (sorted by name)
  megasparse merge --input-dir data/shards --output-prefix data/corpus_text_document

Inputs made by different tokenizers (as their preprocessing reports record) are refused; inputs
without a recorded tokenizer are merged with a warning. OUT_report.json records the inputs, the
tokenizer and the largest token id, as preprocessing does.
"""


def _prefixes_in_dir(folder: str) -> list[str]:
    from megasparse.data.indexed_dataset import dataset_exists

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder}: --input-dir is not a folder")
    prefixes = sorted(str(p.with_suffix("")) for p in root.glob("*.idx") if dataset_exists(p.with_suffix("")))
    if not prefixes:
        raise ValueError(f"{folder}: no .bin/.idx pairs found; check --input-dir")
    return prefixes


def main(argv: Optional[list[str]] = None, prog: str = "megasparse merge") -> int:
    parser = command_parser(prog, __doc__, EPILOG)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PREFIX", help="dataset prefixes (path without .bin/.idx)")
    source.add_argument("--input-dir", metavar="DIR", help="merge every .bin/.idx pair in DIR, sorted by name")
    parser.add_argument(
        "--output-prefix", required=True, metavar="OUT", help="writes OUT.bin, OUT.idx and OUT_report.json"
    )
    args = parser.parse_args(argv)
    prog = parser.prog

    from megasparse.data.dataset_report import common_vocabulary, report_path
    from megasparse.data.indexed_dataset import (
        IndexedDataset,
        IndexedDatasetError,
        IndexedDatasetWriter,
        data_file_path,
    )
    from megasparse.progress import Progress

    try:
        prefixes = args.input if args.input else _prefixes_in_dir(args.input_dir)
        out = str(Path(args.output_prefix))
        if out in {str(Path(p)) for p in prefixes}:
            raise ValueError(f"{out}: --output-prefix is also an input; choose another name")
        # Open (and so validate) every input before writing anything.
        inputs = [IndexedDataset(p) for p in prefixes]
        dtypes = {str(ds.dtype) for ds in inputs}
        if len(dtypes) > 1:
            found = ", ".join(f"{ds.prefix}={ds.dtype}" for ds in inputs)
            raise ValueError(f"inputs have different token dtypes ({found}); merge only data from one tokenizer")
        tokenizer, max_token_id, unrecorded = common_vocabulary(prefixes)
        if unrecorded:
            print(
                f"{prog}: warning: no tokenizer recorded for {', '.join(unrecorded)} (older or foreign data): "
                "cannot check that every input was made by the same tokenizer",
                file=sys.stderr,
            )
        documents = sum(len(ds) for ds in inputs)
        tokens = sum(ds.num_tokens for ds in inputs)
        with IndexedDatasetWriter(out, inputs[0].dtype) as writer:
            sizes = [os.path.getsize(data_file_path(p)) for p in prefixes]
            with Progress("merge", total=sum(sizes), unit="B", enabled=len(prefixes) > 1) as progress:
                for prefix, size in zip(prefixes, sizes):
                    writer.add_index(prefix)
                    progress.update(size)
        report = {
            "output_prefix": out,
            "merged_from": prefixes,
            "documents": documents,
            "tokens_written": tokens,
            "dtype": str(inputs[0].dtype),
            "tokenizer": tokenizer,
            "max_token_id": max_token_id,
        }
        Path(report_path(out)).write_text(json.dumps(report, indent=2) + "\n")
    except (ValueError, OSError) as exc:  # IndexedDatasetError is a ValueError
        msg = str(exc) if isinstance(exc, (ValueError, IndexedDatasetError)) else f"{exc.filename}: {exc.strerror}"
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    print(
        f"merged {len(prefixes)} datasets into {out}.bin/.idx: {documents} documents, {tokens} tokens, "
        f"dtype {inputs[0].dtype}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Train a SentencePiece tokenizer (BPE or unigram) on jsonl/.gz/.zst, parquet, arrow or text files.

The same as `megasparse tokenizer` (see `--help`); the work is in megasparse/cli/tokenizer.py.
"""

import sys

from megasparse.cli.tokenizer import main

if __name__ == "__main__":
    sys.exit(main(prog="train_tokenizer.py"))

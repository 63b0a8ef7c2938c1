#!/usr/bin/env python3
"""Tokenize a corpus (jsonl/.gz/.zst, parquet, arrow) into Megatron-compatible .bin/.idx files.

The same as `megasparse preprocess` (see `--help`); the work is in megasparse/cli/preprocess.py.
"""

import sys

from megasparse.cli.preprocess import main

if __name__ == "__main__":
    sys.exit(main(prog="preprocess_data.py"))

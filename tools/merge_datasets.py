#!/usr/bin/env python3
"""Concatenate several .bin/.idx datasets (e.g. preprocessing shards) into one.

The same as `megasparse merge` (see `--help`); the work is in megasparse/cli/merge.py.
"""

import sys

from megasparse.cli.merge import main

if __name__ == "__main__":
    sys.exit(main(prog="merge_datasets.py"))

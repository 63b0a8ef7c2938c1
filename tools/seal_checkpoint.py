#!/usr/bin/env python3
"""Add the manifest to checkpoint folders saved before megasparse recorded one.

The same as `megasparse seal` (see `--help`); the work is in megasparse/cli/seal.py.
"""

import sys

from megasparse.cli.seal import main

if __name__ == "__main__":
    sys.exit(main(prog="seal_checkpoint.py"))

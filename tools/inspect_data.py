#!/usr/bin/env python3
"""Show what a token file holds: documents, token counts, the largest id, and decoded samples.

The same as `megasparse inspect` (see `--help`); the work is in megasparse/cli/inspect_data.py.
"""

import sys

from megasparse.cli.inspect_data import main

if __name__ == "__main__":
    sys.exit(main(prog="inspect_data.py"))

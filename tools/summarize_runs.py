#!/usr/bin/env python3
"""Print a table of finished runs and plot their activation ratio against training tokens.

The same as `megasparse summarize` (see `--help`); the work is in megasparse/cli/summarize.py.
"""

import sys

from megasparse.cli.summarize import main

if __name__ == "__main__":
    sys.exit(main(prog="summarize_runs.py"))

#!/usr/bin/env python3
"""Fit the Sparsing Law (activation ratio vs training tokens) to one or more runs.

The same as `megasparse fit` (see `--help`); the work is in megasparse/cli/fit.py.
"""

import sys

from megasparse.cli.fit import main

if __name__ == "__main__":
    sys.exit(main(prog="fit_sparsing_law.py"))

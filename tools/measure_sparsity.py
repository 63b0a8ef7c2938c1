#!/usr/bin/env python3
"""Measure activation sparsity (CETT-PPL-p%, FAT-ε, top-k, zero threshold) on checkpoints.

The same as `megasparse measure` (see `--help`); the work is in megasparse/cli/measure.py.
"""

import sys

from megasparse.cli.measure import main

if __name__ == "__main__":
    sys.exit(main(prog="measure_sparsity.py"))

#!/usr/bin/env python3
"""Convert checkpoints between our layouts and to or from other formats.

The same as `megasparse convert` (see `--help`); the work is in megasparse/cli/convert.py.
"""

import sys

from megasparse.cli.convert import main

if __name__ == "__main__":
    sys.exit(main(prog="convert_checkpoint.py"))

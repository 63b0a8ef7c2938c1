#!/usr/bin/env python3
"""Write a DeepSpeed hostfile from a SLURM node list (inside an sbatch script: SLURM_JOB_NODELIST).

The same as `megasparse hostfile` (see `--help`); the work is in megasparse/cli/hostfile.py.
"""

import sys

from megasparse.cli.hostfile import main

if __name__ == "__main__":
    sys.exit(main(prog="write_hostfile.py"))

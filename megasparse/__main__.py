"""``python -m megasparse <command>``: the same as the ``megasparse`` command."""

import sys

from megasparse.cli.main import main

sys.exit(main())

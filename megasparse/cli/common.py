"""What every command-line entry point shares: argument errors as one line."""

from __future__ import annotations

import argparse


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes end in one error line (no usage dump), like every other bad input; exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def command_parser(prog: str, doc: str | None, epilog: str, description: str | None = None) -> OneLineErrorParser:
    """A parser whose ``--help`` keeps the epilog's examples as written."""
    return OneLineErrorParser(
        prog=prog,
        description=description or (doc or "").strip(),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

"""Print a table of finished runs (final loss, eval PPL, activation ratio) and plot their
activation ratio against training tokens, from their TensorBoard logdirs."""

from __future__ import annotations

import sys
from typing import Optional

from megasparse.cli.common import command_parser

EPILOG = """examples:
  megasparse summarize relu=runs/quickstart/relu/tensorboard silu=runs/quickstart/silu/tensorboard \\
      --plot runs/quickstart/activation_ratio.png
"""


def main(argv: Optional[list[str]] = None, prog: str = "megasparse summarize") -> int:
    p = command_parser(prog, __doc__, EPILOG)
    p.add_argument("runs", nargs="+", metavar="NAME=LOGDIR", help="a run's name and TensorBoard logdir")
    p.add_argument("--plot", default=None, help="write a PNG of activation ratio vs tokens here")
    args = p.parse_args(argv)

    from megasparse.training.run_summary import format_table, plot_activation_ratio, summarize

    runs = []
    for spec in args.runs:
        name, sep, logdir = spec.partition("=")
        if not sep:
            name, logdir = spec, spec
        try:
            runs.append(summarize(name, logdir))
        except FileNotFoundError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    print(format_table(runs))
    if args.plot:
        plot_activation_ratio(runs, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

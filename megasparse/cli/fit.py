"""Fit the Sparsing Law (activation ratio vs training tokens) to one or more runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from megasparse.cli.common import command_parser
from megasparse.law.data import (
    DEFAULT_RATIO_TAG,
    REFERENCE_CURVES,
    REFERENCE_PREFIX,
    TOKENS_TAG,
    LawDataError,
    load_curve,
    ratios_to_fraction,
    read_pairs_json,
)
from megasparse.law.fit import LAWS, METHODS, PAPER_TABLE2, LawFitError, fit_sparsing_law
from megasparse.law.report import RunFit, markdown_report, plot_fits, text_table
from megasparse.law.width_depth import WidthDepthError, fit_bottleneck
from megasparse.progress import Progress

EPILOG = f"""\
RUN is one of
  a TensorBoard logdir (or event file): pairs --tag with '{TOKENS_TAG}' by step
  a .json/.txt file: {{"token_passed": [...], "activation_ratio": [...]}} (the authors' format;
      also "tokens_b" = billions, "tokens" = raw counts) or a list of such records; .jsonl = records
  a .csv file with a header: tokens (raw count) or tokens_b (billions), activation_ratio
  ref:NAME, a packaged released curve of the paper: {", ".join("ref:" + n for n in REFERENCE_CURVES)}
Activation ratios may be fractions or percent (any value > 1 means percent).

Each fit reports A0 (the limit activation ratio) with its standard error and its 95%
profile-likelihood interval (drawn as a band by --plot; '≤'/'≥' mark an end the data do not
bound), and warns when the data move against the law (a falling curve fitted with --law silu).
--law may be left out when every RUN is a ref:NAME, which names its law.

examples:
  # fit a training run's calibrated CETT activation ratio
  megasparse fit runs/0.1b-relu/tb --law relu --json fit.json --plot fit.png
  # the paper's released 0.1B SiLU curve (its law from the name), dropping the 5 early points
  # the published fit dropped
  megasparse fit ref:0.1b_silu --skip-first 5 --report fit.md
  # several runs, with the convergence-speed panel (non-embedding params per run)
  megasparse fit ref:0.1b_relu ref:0.8b_relu --law relu --params 1.08e8 7.60e8 --plot relu.png
  # width-depth bottleneck from [{{"ratio": 48, "A0": 0.0614}}, ...]
  megasparse fit --width-depth sweep.json

exit status: 0 ok, 1 a fit failed (reported), 2 bad input.
"""


def build_parser(prog: str = "megasparse fit") -> argparse.ArgumentParser:
    p = command_parser(
        prog,
        __doc__,
        EPILOG,
        description="Fit the Sparsing Law by non-linear least squares (D = tokens in billions):\n"
        "  ReLU: A(D) = exp(-c*D^alpha + b) + A0      SiLU: A(D) = -c*D^(-alpha) + A0\n"
        "Prints a table; optionally writes JSON, a plot, and a markdown report with the\n"
        "paper's Table 2 alongside released runs.",
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="runs to fit (see below)")
    p.add_argument(
        "--law",
        choices=LAWS,
        help="which law to fit (the gate activation of the runs); ref:NAME runs default to their own",
    )
    p.add_argument(
        "--tag", default=DEFAULT_RATIO_TAG, help=f"activation-ratio scalar tag (default {DEFAULT_RATIO_TAG})"
    )
    p.add_argument("--tokens-tag", default=TOKENS_TAG, help=f"cumulative-token scalar tag (default {TOKENS_TAG})")
    p.add_argument(
        "--skip-first",
        type=int,
        default=0,
        metavar="N",
        help="drop the N earliest points (warmup / noisy start) before fitting",
    )
    p.add_argument(
        "--paper-skip",
        action="store_true",
        help="for released runs (ref:NAME, or the authors' files such as 0.2b_silu.txt) use the "
        "early-point skip of the published fit instead of --skip-first",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="lm = unbounded Levenberg-Marquardt (the paper), trf = bounded trust region, "
        "auto = both from every start, best admissible fit (default)",
    )
    p.add_argument(
        "--params",
        type=float,
        nargs="+",
        metavar="N",
        help="non-embedding parameter count, one for all runs or one per run: adds the "
        "d(1-A)/dD vs tokens/params panel to --plot",
    )
    p.add_argument("--json", metavar="OUT.json", help="write the fitted parameters per run")
    p.add_argument("--plot", metavar="OUT.png", help="write data + fitted curves")
    p.add_argument("--report", metavar="OUT.md", help="write a markdown report")
    p.add_argument(
        "--width-depth",
        metavar="FILE.json",
        help='fit the "linear, then flat" bottleneck to [{"ratio": r, "A0": a}, ...]',
    )
    return p


def law_of(run: str, law: Optional[str]) -> str:
    """``--law``, or the law a released run's name carries (``ref:0.1b_relu`` -> relu)."""
    if law is not None:
        return law
    name = run[len(REFERENCE_PREFIX) :] if run.startswith(REFERENCE_PREFIX) else None
    if name in PAPER_TABLE2:
        return PAPER_TABLE2[name]["law"]
    raise LawDataError(f"{run}: --law relu|silu is required (only the released runs, ref:NAME, carry their law)")


def _fit_runs(args) -> tuple[list[RunFit], int]:
    laws = [law_of(run, args.law) for run in args.runs]  # every run checked before any is read
    results = []
    for run, law in Progress.wrap(list(zip(args.runs, laws)), "fitting", unit="run", enabled=len(args.runs) >= 4):
        curve = load_curve(run, tag=args.tag, tokens_tag=args.tokens_tag)
        skip = args.skip_first
        row = PAPER_TABLE2.get(curve.name)
        if args.paper_skip and row is not None and row["law"] == law and row["skip"] is not None:
            skip = row["skip"]
        try:
            fit = fit_sparsing_law(curve.tokens_b, curve.activation_ratio, law, skip_first=skip, method=args.method)
        except LawFitError as e:
            raise LawFitError(f"{curve.source}: {e}") from None
        results.append(RunFit(curve, fit))
    return results, int(any(not r.fit.ok for r in results))


def _width_depth(path: str) -> str:
    ratios, a0 = read_pairs_json(path, "ratio", "A0")
    a0, _ = ratios_to_fraction(a0, f"{path}: A0")
    fit = fit_bottleneck(ratios, a0)
    return (
        f"width-depth ({fit.n_points} points): A0 = {fit.intercept:.4g} + {fit.slope:.4g} * min(ratio, "
        f"{fit.bottleneck:.4g}); plateau A0 = {fit.plateau:.4f}; SSE {fit.sse:.3g}"
    )


def main(argv: list[str] | None = None, prog: str = "megasparse fit") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        if not args.runs and not args.width_depth:
            raise LawDataError("no RUN given (and no --width-depth FILE); see --help")
        if args.skip_first < 0:
            raise LawDataError(f"--skip-first must be >= 0, got {args.skip_first}")
        if args.params is not None:
            if len(args.params) not in (1, len(args.runs)):
                raise LawDataError(
                    f"--params: give one count or one per run ({len(args.runs)}), got {len(args.params)}"
                )
            if min(args.params) <= 0:
                raise LawDataError("--params: parameter counts must be > 0")
        status = 0
        if args.runs:
            results, status = _fit_runs(args)
            print(text_table(results))
            for r in results:
                for w in r.curve.notes + r.fit.warnings + ([r.fit.error] if r.fit.error else []):
                    print(f"  {r.curve.name}: {w}")
            if args.json:
                Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
            if args.report:
                Path(args.report).write_text(markdown_report(results))
            if args.plot:
                params = None
                if args.params is not None:
                    params = args.params * len(results) if len(args.params) == 1 else args.params
                plot_fits(results, args.plot, params)
        if args.width_depth:
            print(_width_depth(args.width_depth))
        return status
    except (LawDataError, LawFitError, WidthDepthError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `... | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

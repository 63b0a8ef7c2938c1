"""Entry point: ``deepspeed --module megasparse.train --config C.yaml [--set k=v ...]``.

Also runs as one process (``python -m megasparse.train``), under ``mpirun`` and under ``srun``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

EPILOG = """examples:
  # one process (CPU or one GPU)
  python -m megasparse.train --config configs/runs/quickstart-relu.yaml
  # two processes through the DeepSpeed launcher, overriding keys on the command line
  deepspeed --num_gpus 2 --module megasparse.train --config configs/runs/quickstart-relu.yaml \\
      --set train.steps=200 --set logging.dir=runs/relu
  # SLURM (one task per GPU) or MPI
  srun -n 8 python -m megasparse.train --config C.yaml
  mpirun -np 8 python -m megasparse.train --config C.yaml
"""


def parse_args(argv: Optional[list[str]] = None, prog: str = "megasparse.train") -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="run config YAML (see configs/runs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=100 (repeatable)",
    )
    p.add_argument("--resume", default=None, help="auto | none | CHECKPOINT_DIR (overrides checkpoint.resume)")
    p.add_argument("--print-config", action="store_true", help="print the validated config and exit")
    # Passed by the deepspeed launcher; the rank is read from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None, prog: str = "megasparse.train") -> int:
    from megasparse.config import ConfigError, load_config

    args = parse_args(argv, prog)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0

    from megasparse.training.errors import UserFacingError, user_error_message
    from megasparse.training.trainer import Trainer

    try:
        summary = Trainer(cfg).fit()
    except UserFacingError as exc:
        print(f"error: {user_error_message(exc)}", file=sys.stderr)
        return 2
    return 0 if summary is not None else 1


if __name__ == "__main__":
    sys.exit(main())

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
  # check a paper-scale config for 8 GPUs before launching it: layout, parameters, memory per GPU
  python -m megasparse.train --config configs/runs/0.1b-relu.yaml --dry-run --world-size 8

Only global rank 0 prints: a start-up banner, a line per log window (with an ETA), evaluations,
CETT calibrations and a closing summary. An error found before the processes connect (config,
layout, data, tokenizer) is printed once, by rank 0; every rank exits with status 2.
Exit statuses: 0 finished (or train.exit_after_steps reached); 1 a bug (traceback); 2 bad input;
3 a checkpoint could not be written; 4 NaN/Inf loss or gradients; 5 a rank stopped progressing;
75 stopped early on SIGTERM/SIGUSR1, on the loss of the deepspeed launcher, or on the stop file
<checkpoint.dir>/STOP, after writing a checkpoint (resume to continue; the SLURM examples requeue
the job).
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
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config and its layout for --world-size processes, print parameter counts and "
        "memory per GPU for ZeRO 0-3, and exit without starting processes or reading the data",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        metavar="N",
        help="processes (GPUs) of the run for --dry-run and --print-config (default: the launcher's, else 1)",
    )
    # Passed by the deepspeed launcher; the rank is read from the environment instead.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None, prog: str = "megasparse.train") -> int:
    from megasparse.config import ConfigError, load_config
    from megasparse.training.console import is_console_rank, launch_world_size, print_error

    args = parse_args(argv, prog)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    try:
        cfg = load_config(args.config, overrides)
        if args.world_size is not None and args.world_size < 1:
            raise ConfigError(f"--world-size must be at least 1, got {args.world_size}")
        world = args.world_size or launch_world_size()
        if not args.print_config or args.world_size is not None:
            # Before DeepSpeed is imported and before any process connects: one line from rank 0.
            cfg.validate_layout(world)
    except ConfigError as exc:
        print_error(prog, str(exc))
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0
    if args.dry_run:
        from megasparse.training.dry_run import dry_run

        try:
            print("\n".join(dry_run(cfg, world)))
        except ConfigError as exc:
            print_error(prog, str(exc))
            return 2
        return 0

    from megasparse.training import exit_codes
    from megasparse.training.errors import UserFacingError, exit_status, user_error_message
    from megasparse.training.signals import EXIT_STOPPED
    from megasparse.training.trainer import Trainer

    try:
        trainer = Trainer(cfg)
        summary = trainer.fit()
    except UserFacingError as exc:
        if is_console_rank() or not getattr(exc, "agreed_by_every_rank", False):
            print_error(prog, user_error_message(exc))
        return exit_status(exc)
    if summary.get("exit_status", exit_codes.OK) != exit_codes.OK:
        return summary["exit_status"]
    if trainer.stopped_by is not None:
        return EXIT_STOPPED  # stopped early on request, checkpoint written: resume (requeue) it
    return 0 if summary is not None else 1


if __name__ == "__main__":
    sys.exit(main())

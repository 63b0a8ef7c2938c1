"""End-to-end training throughput: tokens/s, TFLOP/s per GPU, MFU and peak memory.

Runs ``megasparse.train`` (one process, or ``--nproc`` through the DeepSpeed launcher) on a
synthetic token file for the paper's shapes, with activation counters on and off, and prints
one JSON line per run (the median of the logged windows after the first, which holds warm-up).

examples:
  python benchmarks/train_throughput.py --model 0.1b --micro-batch 8 --steps 30
  python benchmarks/train_throughput.py --model 1.2b --micro-batch 4 --counters off reference triton
  python benchmarks/train_throughput.py --model 0.1b --micro-batch 16 --loss-chunk-tokens 8192 --compile
  python benchmarks/train_throughput.py --model 1.2b --micro-batch 8 --loss-chunk-tokens 8192 --compile \
      --fast-path bshd_layout fused_projections --counters triton
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from bench_common import emit, median_after_first, run_training

from megasparse import tags
from megasparse.data.indexed_dataset import IndexedDatasetWriter
from megasparse.training.run_summary import read_scalars

REPO = Path(__file__).resolve().parents[1]
# The fast-path switches: benchmark name -> the train section's key.
FAST_PATH_SWITCHES = {
    "bshd_layout": "attention_bshd_layout",
    "fused_projections": "fused_projections",
    "fused_residual_norm": "fused_residual_norm",
}


def synthetic_tokens(prefix: Path, vocab: int, tokens: int, doc_len: int = 65536, seed: int = 0) -> None:
    """Random documents; uniform tokens stress the model like real data for throughput purposes."""
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix, dtype=np.int32) as w:
        for _ in range(max(1, tokens // doc_len)):
            w.add_document(rng.integers(0, vocab, doc_len, dtype=np.int32))


def prepare_synthetic_data(workdir: Path, vocab: int, tokens: int) -> Path:
    """The synthetic token file in ``workdir`` (made once); returns its prefix."""
    prefix = workdir / "synthetic_text_document"
    if not (workdir / "synthetic_text_document.idx").exists():
        synthetic_tokens(prefix, vocab, tokens + 65536)
    return prefix


def run_dir_name(args, mode: str) -> str:
    variant = (f"-chunk{args.loss_chunk_tokens}" if args.loss_chunk_tokens else "") + (
        "-compiled" if args.compile else ""
    )
    variant += "".join(f"-{name}" for name in args.fast_path)
    return f"{args.model}-mbs{args.micro_batch}-counters-{mode}{variant}"


def benchmark_config(args, mode: str, data_prefix: Path, run_dir: Path) -> dict:
    """The run config of one benchmark variant (also used by profile_step.py)."""
    counters = mode != "off"
    return {
        "base": str(REPO / "configs" / "model" / f"{args.model}.yaml"),
        "model": {"vocab_size": args.vocab, "activation": args.activation},
        "data": {"train": [str(data_prefix)], "seq_length": args.seq},
        "train": {
            "micro_batch_size": args.micro_batch,
            "global_batch_size": args.micro_batch * args.nproc,
            "steps": args.steps,
            "eval_interval": 0,
            "activation_checkpointing": args.activation_checkpointing,
            "loss_chunk_tokens": args.loss_chunk_tokens,
            "compile": args.compile,
            **{key: name in args.fast_path for name, key in FAST_PATH_SWITCHES.items()},
            "schedule": {"kind": "constant", "warmup_steps": 0},
        },
        "sparsity": {"counters": counters, "counter_impl": mode if counters else "auto", "histogram_interval": 1000000},
        "checkpoint": {"dir": None},
        "logging": {"dir": str(run_dir / "tb"), "interval": args.log_interval},
    }


def build_trainer(args, mode: str, workdir: Path, total_steps: int, overrides: Optional[dict] = None):
    """A Trainer in this process for one benchmark variant, on synthetic data for ``total_steps``
    steps (used by profile_step.py and counter_cost.py, which drive its steps themselves).
    ``overrides``: config sections merged over the benchmark's (e.g. held-out data, sparsity)."""
    import yaml

    from megasparse.config import load_config
    from megasparse.training.trainer import Trainer

    data_prefix = prepare_synthetic_data(workdir, args.vocab, (total_steps + 2) * args.micro_batch * (args.seq + 1))
    run_dir = workdir / run_dir_name(args, mode)
    cfg_dict = benchmark_config(args, mode, data_prefix, run_dir)
    cfg_dict["train"]["steps"] = total_steps
    for section, values in (overrides or {}).items():
        cfg_dict[section] = {**cfg_dict.get(section, {}), **values}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(cfg_dict))
    return Trainer(load_config(run_dir / "run.yaml", []))


def add_variant_arguments(p: argparse.ArgumentParser) -> None:
    """The options that pick a model shape and training variant (shared with profile_step.py)."""
    p.add_argument("--model", default="0.1b", help="a configs/model/*.yaml name")
    p.add_argument("--activation", default="relu", choices=["relu", "silu"])
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=122753)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument(
        "--loss-chunk-tokens",
        type=int,
        default=0,
        help="train.loss_chunk_tokens: head + cross-entropy in chunks of this many tokens (0: off)",
    )
    p.add_argument("--compile", action="store_true", help="train.compile: torch.compile RMSNorm and rotary")
    p.add_argument(
        "--fast-path",
        nargs="+",
        default=[],
        choices=list(FAST_PATH_SWITCHES),
        help="fast-path switches to turn on (train.fused_projections etc.; megasparse/model/fast_path.py)",
    )


def run_one(args, mode: str, workdir: Path, data_prefix: Path) -> dict:
    """mode: "off" (no counters), "reference" (PyTorch counters) or "triton" (fused kernel)."""
    run_dir = workdir / run_dir_name(args, mode)
    cfg = benchmark_config(args, mode, data_prefix, run_dir)
    proc = run_training(run_dir, cfg, args.nproc)
    if proc.returncode != 0:
        return {"model": args.model, "counters": mode, "error": (proc.stdout + proc.stderr)[-3000:]}
    s = read_scalars(run_dir / "tb")

    def median(tag: str) -> float:
        return median_after_first(s, tag)

    return {
        "benchmark": "train_throughput",
        "model": args.model,
        "activation": args.activation,
        "micro_batch": args.micro_batch,
        "seq": args.seq,
        "vocab": args.vocab,
        "gpus": args.nproc,
        "counters": mode,
        "activation_checkpointing": args.activation_checkpointing,
        "loss_chunk_tokens": args.loss_chunk_tokens,
        "compile": args.compile,
        "fast_path": args.fast_path,
        "steps": args.steps,
        "tokens_per_sec": median(tags.PERF_TOKENS_PER_SEC),
        "tflops_per_gpu": median(tags.PERF_TFLOPS_PER_GPU),
        "mfu": median(tags.PERF_MFU) if tags.PERF_MFU in s else None,
        "step_time_s": median(tags.PERF_STEP_TIME_S),
        "max_allocated_gb": max(v for _, v in s[tags.MEM_MAX_ALLOCATED_GB]),
        "final_loss": s[tags.TRAIN_LOSS][-1][1],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(p)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-interval", type=int, default=5)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument(
        "--counters",
        nargs="+",
        default=["off", "reference"],
        choices=["off", "reference", "triton"],
        help="counter modes to run: off, the PyTorch reference, the fused Triton kernel",
    )
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="append JSON lines here too")
    args = p.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="megasparse-bench-"))
    needed = (args.steps + 2) * args.micro_batch * args.nproc * (args.seq + 1)
    data_prefix = prepare_synthetic_data(workdir, args.vocab, needed)
    for mode in args.counters:
        emit(run_one(args, mode, workdir, data_prefix), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

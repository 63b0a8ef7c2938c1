"""Where the time of a training step goes: torch.profiler over a few steps of the real trainer.

Builds the same run as ``train_throughput.py`` (synthetic tokens, the paper's shapes), runs
``--warmup`` steps, then profiles ``--steps`` steps of ``Trainer.train_step`` and sums the
self time of every operator and kernel (device time on a GPU, CPU time otherwise) into
categories: matmul, attention, the gated-activation kernel, loss, optimizer, communication,
other elementwise. Prints one JSON line with the categories and writes the top operators as a
table (and optionally a Chrome trace) into ``--out``.

examples:
  python benchmarks/profile_step.py --model 0.1b --micro-batch 8 --counters triton --out /tmp/prof
  python benchmarks/profile_step.py --model 1.2b --micro-batch 4 --loss-chunk-tokens 8192 --compile --trace
  python benchmarks/profile_step.py --model tiny --seq 128 --vocab 512 --micro-batch 2 --steps 1   # CPU smoke
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_common import emit  # noqa: E402
from train_throughput import add_variant_arguments, benchmark_config, prepare_synthetic_data, run_dir_name  # noqa: E402

# First match wins; names are lower-cased operator or kernel names.
CATEGORIES = [
    ("communication", r"nccl|all_reduce|allreduce|all_gather|allgather|reduce_scatter|broadcast|gloo"),
    ("attention", r"flash|fmha|scaled_dot_product|sdpa|efficient_attention|cudnn.*attention|attention"),
    ("gated_activation", r"gated_act"),
    ("loss", r"cross_entropy|log_softmax|nll_loss|logsumexp|linear_cross_entropy"),
    ("optimizer", r"adam|multi_tensor|foreach|_fused_"),
    ("matmul", r"gemm|matmul|\bmm\b|addmm|bmm|linear|cutlass|nvjet|sm90_xmma|cublas"),
]


def category(name: str) -> str:
    lowered = name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, lowered):
            return label
    return "other"


def self_time_us(event, on_gpu: bool) -> float:
    if on_gpu:  # the attribute's name changed across torch releases
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
    return float(event.self_cpu_time_total)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(p)
    p.add_argument("--counters", default="triton", choices=["off", "reference", "triton"])
    p.add_argument("--warmup", type=int, default=3, help="steps before profiling (compilation, autotuning)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--top", type=int, default=30, help="operators in the table")
    p.add_argument("--trace", action="store_true", help="also write a Chrome trace (large)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="folder for the table and trace (default: the workdir)")
    args = p.parse_args()
    args.nproc, args.log_interval = 1, 1000000

    import yaml

    from megasparse.config import load_config
    from megasparse.training.trainer import Trainer

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="megasparse-profile-"))
    out = Path(args.out or workdir)
    out.mkdir(parents=True, exist_ok=True)
    total_steps = args.warmup + args.steps
    data_prefix = prepare_synthetic_data(workdir, args.vocab, (total_steps + 2) * args.micro_batch * (args.seq + 1))
    run_dir = workdir / run_dir_name(args, args.counters)
    cfg_dict = benchmark_config(args, args.counters, data_prefix, run_dir)
    cfg_dict["train"]["steps"] = total_steps
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(cfg_dict))
    trainer = Trainer(load_config(run_dir / "run.yaml", []))
    on_gpu = trainer.device.type == "cuda"

    for _ in range(args.warmup):
        trainer.train_step()
    if on_gpu:
        torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            trainer.train_step()
        if on_gpu:
            torch.cuda.synchronize()

    events = prof.key_averages()
    totals: dict[str, float] = defaultdict(float)
    rows = []
    for event in events:
        t = self_time_us(event, on_gpu)
        if t <= 0:
            continue
        label = category(event.key)
        totals[label] += t
        rows.append((t, label, event.count, event.key))
    grand = sum(totals.values()) or 1.0
    rows.sort(reverse=True)
    clock = "device" if on_gpu else "cpu"
    lines = [f"{'ms/step':>10} {'share':>6}  {'category':<17} {'calls':>6}  operator ({clock} self time)"]
    for t, label, count, key in rows[:args.top]:
        lines.append(f"{t / 1000 / args.steps:10.2f} {t / grand:6.1%}  {label:<17} {count:6d}  {key[:100]}")
    table = "\n".join(lines)
    (out / "profile_top_ops.txt").write_text(table + "\n")
    print(table, file=sys.stderr)
    if args.trace:
        prof.export_chrome_trace(str(out / "profile_trace.json"))
    emit({"benchmark": "profile_step", "model": args.model, "micro_batch": args.micro_batch, "seq": args.seq,
          "vocab": args.vocab, "counters": args.counters, "loss_chunk_tokens": args.loss_chunk_tokens,
          "compile": args.compile, "activation_checkpointing": args.activation_checkpointing,
          "clock": clock, "profiled_steps": args.steps,
          "ms_per_step": {k: round(v / 1000 / args.steps, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
          "share": {k: round(v / grand, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

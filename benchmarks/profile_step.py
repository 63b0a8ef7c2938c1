"""Where the time of a training step goes: torch.profiler over a few steps of the real trainer.

Builds the same run as ``train_throughput.py`` (synthetic tokens, the paper's shapes), runs
``--warmup`` steps, then profiles ``--steps`` steps of ``Trainer.train_step`` and sums the time
of every GPU kernel (on the CPU: every operator's self time) into categories by name: matmul,
attention, the gated-activation kernel, loss, optimizer, compiled elementwise, communication,
other. On a GPU it also times the same number of steps without the profiler and reports the
share of that wall time in which no kernel ran (``device_idle_share``: the GPU waiting for the
host's launch work or a sync). Prints one JSON line with the categories and writes the top operators as a
table (and optionally a Chrome trace) into ``--out``.

examples:
  python benchmarks/profile_step.py --model 0.1b --micro-batch 8 --counters triton --out /tmp/prof
  python benchmarks/profile_step.py --model 1.2b --micro-batch 4 --loss-chunk-tokens 8192 --compile --trace
  # on the CPU
  python benchmarks/profile_step.py --model tiny --seq 128 --vocab 512 --micro-batch 2 --steps 1 \
      --counters reference
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench_common import emit
from train_throughput import add_variant_arguments, build_trainer

# First match wins; lower-cased names of CPU operators (on the CPU) or of GPU kernels (on a GPU).
CATEGORIES = [
    ("communication", r"nccl|all_reduce|allreduce|all_gather|allgather|reduce_scatter|broadcast|gloo"),
    ("attention", r"flash|fmha|scaled_dot_product|sdpa|efficient_attention|cudnn.*(attn|attention)|attention"),
    ("gated_activation", r"gated_act"),
    ("loss", r"cross_entropy|softmax|nll_loss|logsumexp"),
    ("optimizer", r"adam|multi_tensor"),
    # Inductor's kernels (train.compile): the compiled RMSNorm and rotary embedding.
    ("compiled_elementwise", r"^triton_(poi|red|per)_"),
    ("matmul", r"gemm|matmul|\bmm\b|addmm|bmm|mmbackward|linear|cutlass|nvjet|xmma|cublas|sm\d+_"),
]


def category(name: str) -> str:
    lowered = name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, lowered):
            return label
    return "other"


def timed_events(events, on_gpu: bool):
    """(self time in µs, event) of the events that each hold time once.

    On a GPU: the kernels and copies themselves (device-side events), as torch's own table
    totals them; the CPU operators that launched them carry the same time again, and user
    annotations (record_function regions, compiled regions) cover kernels a third time.
    On the CPU: every operator's self CPU time.
    """
    from torch.autograd import DeviceType

    for event in events:
        if on_gpu:
            if event.device_type == DeviceType.CPU or event.is_user_annotation:
                continue
            t = float(event.self_device_time_total)
        else:
            t = float(event.self_cpu_time_total)
        if t > 0:
            yield t, event


def busy_us(intervals) -> float:
    """Length of the union of (start, end) intervals in µs: the time the GPU ran at least one
    kernel, whatever overlaps between streams."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def device_intervals(events):
    """(start, end) in µs of every kernel and copy on the GPU (not the user annotations)."""
    from torch.autograd import DeviceType

    for event in events:
        if event.device_type != DeviceType.CPU and not event.is_user_annotation:
            yield event.time_range.start, event.time_range.end


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

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="megasparse-profile-"))
    out = Path(args.out or workdir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(args, args.counters, workdir, args.warmup + 2 * args.steps)
    on_gpu = trainer.device.type == "cuda"

    for _ in range(args.warmup):
        trainer.train_step()
    if on_gpu:
        torch.cuda.synchronize()
    # The same number of steps without the profiler: the step's wall time, against which the GPU's
    # busy time shows how long it waited for the host (launch work, syncs), unprofiled.
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    if on_gpu:
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - started) * 1000 / args.steps
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.steps):
            trainer.train_step()
        if on_gpu:
            torch.cuda.synchronize()

    busy_ms = busy_us(device_intervals(prof.events())) / 1000 / args.steps if on_gpu else 0.0
    totals: dict[str, float] = defaultdict(float)
    rows = []
    for t, event in timed_events(prof.key_averages(), on_gpu):
        label = category(event.key)
        totals[label] += t
        rows.append((t, label, event.count, event.key))
    grand = sum(totals.values()) or 1.0
    rows.sort(reverse=True)
    clock = "device" if on_gpu else "cpu"
    what = "kernel (device time)" if on_gpu else "operator (cpu self time)"
    lines = [f"{'ms/step':>10} {'share':>6}  {'category':<20} {'calls':>6}  {what}"]
    for t, label, count, key in rows[: args.top]:
        lines.append(f"{t / 1000 / args.steps:10.2f} {t / grand:6.1%}  {label:<20} {count:6d}  {key[:100]}")
    table = "\n".join(lines)
    (out / "profile_top_ops.txt").write_text(table + "\n")
    print(table, file=sys.stderr)
    if args.trace:
        prof.export_chrome_trace(str(out / "profile_trace.json"))
    emit(
        {
            "benchmark": "profile_step",
            "model": args.model,
            "micro_batch": args.micro_batch,
            "seq": args.seq,
            "vocab": args.vocab,
            "counters": args.counters,
            "loss_chunk_tokens": args.loss_chunk_tokens,
            "compile": args.compile,
            "fast_path": args.fast_path,
            "activation": args.activation,
            "activation_checkpointing": args.activation_checkpointing,
            "clock": clock,
            "profiled_steps": args.steps,
            "ms_per_step": {
                k: round(v / 1000 / args.steps, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
            },
            "share": {k: round(v / grand, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "wall_ms_per_step": round(wall_ms, 3),
            # The GPU ran no kernel for this share of the unprofiled step (None on the CPU).
            "device_busy_ms_per_step": round(busy_ms, 3) if on_gpu else None,
            "device_idle_share": round(1 - busy_ms / wall_ms, 4) if on_gpu else None,
        },
        None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

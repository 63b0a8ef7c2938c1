"""Each fast-path switch alone, measured in one process against the plain path.

One trainer (counters on with CETT thresholds, as counter_cost.py) runs blocks of steps with the
switches of megasparse/model/fast_path.py set per block: the plain path, each switch alone, and
all together. The variants take turns in every round (rotated, so a slow drift hits all alike):
same compiled code, same data stream, same memory. Every variant runs ``--warmup`` steps first,
so its compilation stays out of the timing.

Prints one JSON line: per variant the median step time, tokens/s, MFU and peak memory, and its
gain over the plain path (median over rounds of plain/variant − 1, with min and max).

examples:
  python benchmarks/fast_path_ablation.py --model 1.2b --micro-batch 8 --loss-chunk-tokens 8192 --compile
  # on the CPU
  python benchmarks/fast_path_ablation.py --model tiny --seq 128 --vocab 512 --micro-batch 2 --rounds 2 \
      --block-steps 1 --warmup 1 --counter-impl reference
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_common import emit
from train_throughput import FAST_PATH_SWITCHES, add_variant_arguments, build_trainer

SWITCHES = tuple(FAST_PATH_SWITCHES)
VARIANTS = {"plain": (), **{name: (name,) for name in SWITCHES}, "all": SWITCHES}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(p)
    p.add_argument("--counter-impl", default="triton", choices=["reference", "triton"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant first (compilation)")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks of each variant")
    p.add_argument("--block-steps", type=int, default=3, help="steps per block")
    p.add_argument("--tau", type=float, default=0.05, help="per-layer CETT threshold τ the counters use")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="append the JSON line here too")
    args = p.parse_args()
    args.nproc, args.log_interval, args.steps = 1, 1000000, 0

    from megasparse.model.fast_path import apply_fast_path

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="megasparse-fast-path-"))
    variants = args.variants
    total = len(variants) * (args.warmup + args.rounds * args.block_steps)
    trainer = build_trainer(args, args.counter_impl, workdir, total)
    counters = trainer.counters
    counters.set_layer_thresholds(torch.full((len(counters.layer_ids),), args.tau))
    cuda = trainer.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def use(variant: str) -> None:
        on = VARIANTS[variant]
        apply_fast_path(trainer.model, **{name: name in on for name in SWITCHES})

    first_step_s = None  # the first variant's first step: compilation, autotuning, allocation
    for variant in variants:  # compile and allocate every variant before timing any
        use(variant)
        for _ in range(args.warmup):
            start = time.perf_counter()
            trainer.train_step()
            sync()
            first_step_s = first_step_s or round(time.perf_counter() - start, 2)
    step_s = {v: [] for v in variants}
    peak_gb = dict.fromkeys(variants, 0.0)
    for r in range(args.rounds):
        for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
            use(variant)
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(args.block_steps):
                trainer.train_step()
            sync()
            step_s[variant].append((time.perf_counter() - start) / args.block_steps)
            if cuda:
                peak_gb[variant] = max(peak_gb[variant], torch.cuda.max_memory_allocated() / 1e9)
    if int(counters.tokens.sum()) == 0:
        raise RuntimeError("the counters counted nothing: the benchmark did not measure counting")

    tokens = args.micro_batch * args.seq
    record = {
        "benchmark": "fast_path_ablation",
        "model": args.model,
        "micro_batch": args.micro_batch,
        "seq": args.seq,
        "vocab": args.vocab,
        "activation": args.activation,
        "counter_impl": args.counter_impl,
        "loss_chunk_tokens": args.loss_chunk_tokens,
        "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing,
        "rounds": args.rounds,
        "block_steps": args.block_steps,
        "first_step_s": first_step_s,
        "variants": {},
    }
    for variant in variants:
        median_step = statistics.median(step_s[variant])
        tps = tokens / median_step
        entry = {"step_s": round(median_step, 5), "tokens_per_sec": round(tps, 1)}
        entry["peak_gb"] = round(peak_gb[variant], 2)
        if trainer.peak:
            entry["mfu"] = round(trainer.flops_per_token * tps / 1e12 / trainer.peak, 4)
        if "plain" in step_s and variant != "plain":
            gains = [p / v - 1 for p, v in zip(step_s["plain"], step_s[variant])]
            entry.update(gain_median=round(statistics.median(gains), 4), gain_min=round(min(gains), 4))
            entry["gain_max"] = round(max(gains), 4)
        entry["block_step_s"] = [round(t, 5) for t in step_s[variant]]
        record["variants"][variant] = entry
    emit(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What counting activations on every step costs, measured in one process.

Separate processes for "counters off" and "counters on" differ by more than the counters cost
(start-up, compilation, allocator state, the machine's own drift: a few percent between runs).
Here one trainer runs blocks of steps alternately with the counters detached and attached, in
the order off, on, on, off, off, on, ... (so a slow drift hits both modes alike), everything else
identical: same compiled code, same data stream, same memory. An "on" block does the whole
counting work of a run with CETT thresholds: the zero-threshold and threshold counts inside the
fused kernel, the per-step refresh of τ_l/‖W_down[:, i]‖ (τ set to a fixed per-layer value here,
as a calibration would), and at the end of the block the reduction and reset that logging does.

Prints one JSON line: median step time, tokens/s and MFU of each mode, and the cost
(on / off − 1) as the median over the adjacent off/on block pairs, with their min and max.

examples:
  python benchmarks/counter_cost.py --model 0.1b --micro-batch 8 --loss-chunk-tokens 8192 --compile
  # on the CPU
  python benchmarks/counter_cost.py --model tiny --seq 128 --vocab 512 --micro-batch 2 --blocks 4 \
      --block-steps 2 --counter-impl reference
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
from train_throughput import add_variant_arguments, build_trainer


def block_order(blocks: int) -> list[bool]:
    """off, on, on, off, off, on, ... (True = counters on): ``blocks`` of each."""
    order = []
    for pair in range(blocks):
        order += [False, True] if pair % 2 == 0 else [True, False]
    return order


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(p)
    p.add_argument("--counter-impl", default="triton", choices=["reference", "triton"])
    p.add_argument("--warmup", type=int, default=5, help="steps before timing (compilation, autotuning)")
    p.add_argument("--blocks", type=int, default=6, help="timed blocks of each mode")
    p.add_argument("--block-steps", type=int, default=5, help="steps per block")
    p.add_argument("--tau", type=float, default=0.05, help="per-layer CETT threshold τ the counters use")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="append the JSON line here too")
    args = p.parse_args()
    args.nproc, args.log_interval = 1, 1000000
    args.steps = 0  # build_trainer sets the step count, once the block count is known

    from megasparse.sparsity.counters import attach_counters
    from megasparse.sparsity.reduction import reduce_counters

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="megasparse-counter-cost-"))
    order = block_order(args.blocks)
    off_warmup = 2
    trainer = build_trainer(args, args.counter_impl, workdir, args.warmup + off_warmup + len(order) * args.block_steps)
    counters = trainer.counters
    counters.set_layer_thresholds(torch.full((len(counters.layer_ids),), args.tau))
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

    for _ in range(args.warmup):  # both modes, so each has compiled and allocated before timing
        trainer.train_step()
    attach_counters(trainer.model, None)
    for _ in range(off_warmup):
        trainer.train_step()
    counters.reset()

    step_times = {False: [], True: []}  # per block: seconds per step
    for counting in order:
        attach_counters(trainer.model, counters if counting else None)
        # The trainer refreshes τ/‖W_down‖ only while thresholds are set; "off" skips it too.
        counters.set_layer_thresholds(torch.full((len(counters.layer_ids),), args.tau) if counting else None)
        sync()
        start = time.perf_counter()
        for _ in range(args.block_steps):
            trainer.train_step()
        snapshot = reduce_counters(counters, trainer.counter_groups) if counting else None  # as logging does
        sync()
        step_times[counting].append((time.perf_counter() - start) / args.block_steps)
        # Untimed check that the mode did what it says: counts only in "on" blocks, with thresholds.
        counted = int(counters.tokens.sum())
        if counting != (counted > 0) or (counting and int(counters.above_threshold.sum()) == 0):
            raise RuntimeError(f"counters {'on' if counting else 'off'} but {counted} tokens counted")
        if snapshot is not None and not 0.0 < snapshot.activation_ratio() < 1.0:
            raise RuntimeError(f"implausible activation ratio {snapshot.activation_ratio()}")
        counters.reset()

    # Each "on" block against the "off" block next to it in the same pair.
    pair_costs = []
    for i in range(0, len(order), 2):
        on = step_times[True][i // 2]
        off = step_times[False][i // 2]
        pair_costs.append(on / off - 1)
    tokens = args.micro_batch * args.seq
    record = {
        "benchmark": "counter_cost",
        "model": args.model,
        "micro_batch": args.micro_batch,
        "seq": args.seq,
        "vocab": args.vocab,
        "activation": args.activation,
        "counter_impl": args.counter_impl,
        "loss_chunk_tokens": args.loss_chunk_tokens,
        "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing,
        "blocks": args.blocks,
        "block_steps": args.block_steps,
    }
    for counting, name in ((False, "off"), (True, "on")):
        median_step = statistics.median(step_times[counting])
        tps = tokens / median_step
        record[f"{name}_step_s"] = round(median_step, 5)
        record[f"{name}_tokens_per_sec"] = round(tps, 1)
        if trainer.peak:
            record[f"{name}_mfu"] = round(trainer.flops_per_token * tps / 1e12 / trainer.peak, 4)
    record.update(
        {
            "cost_median": round(statistics.median(pair_costs), 4),
            "cost_min": round(min(pair_costs), 4),
            "cost_max": round(max(pair_costs), 4),
            "block_step_s": {
                k: [round(t, 5) for t in v] for k, v in (("off", step_times[False]), ("on", step_times[True]))
            },
        }
    )
    emit(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bus bandwidth of all-reduce and all-gather between the GPUs of one host (NCCL), per message size.

Launched with one process per GPU; rank 0 prints one JSON line per operation and size: the
median time over ``--repeats`` calls after warm-up and the bus bandwidth as nccl-tests defines
it (all-reduce: bytes · 2(n−1)/n ÷ time; all-gather: total bytes · (n−1)/n ÷ time). On the CPU
(gloo) it runs the same code at small sizes, which checks the script and measures nothing.

examples:
  python -m deepspeed.launcher.runner --num_gpus 8 benchmarks/nccl_bandwidth.py --out /tmp/nccl.jsonl
  python -m deepspeed.launcher.runner --num_gpus 2 benchmarks/nccl_bandwidth.py --sizes-mb 1 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds per call (every rank synchronised around each call)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 16, 64, 256, 1024], help="bf16 message sizes")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--out", default=None, help="append the JSON lines here too (rank 0)")
    args, _ = p.parse_known_args()  # the launcher appends --local_rank
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_cuda else "gloo")
    n, rank = dist.get_world_size(), dist.get_rank()
    for mb in args.sizes_mb:
        elements = int(mb * 2**20) // 2
        x = torch.randn(elements, device=device).to(torch.bfloat16 if use_cuda else torch.float32)
        shard = x[: elements // n].clone()
        gathered = torch.empty(shard.numel() * n, dtype=x.dtype, device=device)
        for op, fn, factor in (
            ("all_reduce", lambda: dist.all_reduce(x), 2 * (n - 1) / n),
            ("all_gather", lambda: dist.all_gather_into_tensor(gathered, shard), (n - 1) / n),
        ):
            seconds = timed(fn, device, args.repeats)
            nbytes = (x.numel() if op == "all_reduce" else gathered.numel()) * x.element_size()
            record = {"benchmark": "nccl_bandwidth", "op": op, "ranks": n, "bytes": nbytes, "seconds": seconds}
            record["bus_gb_per_s"] = round(nbytes * factor / seconds / 1e9, 2)
            if rank == 0:
                line = json.dumps(record)
                print(line, flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(line + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

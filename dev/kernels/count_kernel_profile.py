"""Launches the forward kernel's variants once each at one training shape, for a hardware profiler
(ncu) to compare them, and prints each compiled variant's registers, spills and shared memory.

Variants: SiLU counting off; SiLU counting with the default launch and with the launch it had
before the tile sweeps (16 × 128 tiles, 16 per program, threshold compare on the stored h, exact
math); ReLU counting. Needs a CUDA GPU. Run it under ncu, e.g.

examples:
  ncu --clock-control none --kernel-name regex:gated_act_fwd --section SpeedOfLight \\
      --section Occupancy --section WarpStateStats python dev/kernels/count_kernel_profile.py
  python dev/kernels/count_kernel_profile.py --tokens 8192      # registers only, no profiler
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from megasparse.kernels.gated_activation import CountTarget
from megasparse.kernels.triton_gated_activation import (
    forward_config,
    gated_act_fwd_kernel,
    gated_activation_forward,
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--width", type=int, default=4480)
    args = p.parse_args()
    t, f = args.tokens, args.width
    gen = torch.Generator(device="cuda").manual_seed(0)
    g = torch.randn(t, f, device="cuda", dtype=torch.bfloat16, generator=gen)
    u = torch.randn(t, f, device="cuda", dtype=torch.bfloat16, generator=gen)
    thr = torch.rand(f, device="cuda", generator=gen) * 0.5

    def counts() -> CountTarget:
        z = torch.zeros(f, dtype=torch.int64, device="cuda")
        return CountTarget(
            active=z,
            tokens=torch.zeros((), dtype=torch.int64, device="cuda"),
            above_threshold=z.clone(),
            thresholds=thr,
        )

    silu_count = forward_config(f, "silu", True, g.dtype, g.device)
    variants = [
        ("silu", False, forward_config(f, "silu", False, g.dtype, g.device)),
        ("silu", True, silu_count),
        (
            "silu",
            True,
            dataclasses.replace(
                silu_count, block_t=16, block_f=128, row_tiles=16, stages=3, thr_on_product=False, fast_silu=False
            ),
        ),
        ("relu", True, forward_config(f, "relu", True, g.dtype, g.device)),
    ]
    for activation, count, cfg in variants:
        print(json.dumps({"launch": activation, "counting": count, "config": dataclasses.asdict(cfg)}), flush=True)
        gated_activation_forward(g, u, activation, counts() if count else None, cfg)
    torch.cuda.synchronize()
    for device_cache in getattr(gated_act_fwd_kernel, "device_caches", {}).values():
        for key, compiled in device_cache[0].items():
            try:
                print(
                    json.dumps(
                        {
                            "key": str(key)[-300:],
                            "n_regs": compiled.n_regs,
                            "n_spills": compiled.n_spills,
                            "shared": compiled.metadata.shared,
                            "num_warps": compiled.metadata.num_warps,
                        }
                    ),
                    flush=True,
                )
            except Exception as err:  # Triton's cache layout differs between versions
                print(json.dumps({"error": repr(err)[:200]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

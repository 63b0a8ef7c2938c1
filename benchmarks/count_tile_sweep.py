"""Tile sweep of the counting forward kernel: which (BLOCK_T, BLOCK_F, warps, row tiles, pipeline
stages) moves the bytes fastest while counting, for ReLU and SiLU at the paper's FFN widths.

Each configuration's counts are checked against the default configuration's (they must be equal:
integer atomics, any launch shape). Times with triton.testing.do_bench; bandwidth counts reading
g, u and writing h (3·T·f·2 bytes in bf16) against a large copy's read + write bandwidth.
One JSON line per configuration.

examples:
  python benchmarks/count_tile_sweep.py
  python benchmarks/count_tile_sweep.py --activations silu --widths 4480 --no-thresholds
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_common import emit  # noqa: E402
from megasparse.kernels import triton_gated_activation as tga  # noqa: E402
from megasparse.kernels.gated_activation import CountTarget  # noqa: E402

# (BLOCK_T, BLOCK_F, num_warps) x ROW_TILES x STAGES
TILES = [(16, 128, 4), (32, 128, 4), (32, 128, 8), (64, 128, 8), (16, 256, 8)]
ROW_TILES = [4, 8, 16]
STAGES = [1, 2, 3, 4]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--widths", type=lambda s: [int(x) for x in s.split(",")], default=[1920, 4480])
    p.add_argument("--activations", nargs="+", default=["relu", "silu"])
    p.add_argument("--no-thresholds", action="store_true", help="count g > 0 only (no CETT thresholds)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import triton.testing

    src = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / (triton.testing.do_bench(lambda: dst.copy_(src)) * 1e-3) / 1e9
    del src, dst
    gen = torch.Generator(device="cuda").manual_seed(0)
    for activation, f in itertools.product(args.activations, args.widths):
        g = torch.randn(args.tokens, f, device="cuda", dtype=torch.bfloat16, generator=gen)
        u = torch.randn(args.tokens, f, device="cuda", dtype=torch.bfloat16, generator=gen)
        thresholds = None if args.no_thresholds else torch.rand(f, device="cuda", generator=gen) * 0.5

        def counts() -> CountTarget:
            z = torch.zeros(f, dtype=torch.int64, device="cuda")
            return CountTarget(active=z, tokens=torch.zeros((), dtype=torch.int64, device="cuda"),
                               above_threshold=None if thresholds is None else z.clone(), thresholds=thresholds)

        expected = counts()
        tga._forward(g, u, activation, expected)
        base = {"benchmark": "count_tile_sweep", "activation": activation, "tokens": args.tokens, "f": f,
                "thresholds": thresholds is not None, "copy_gbs": round(copy_gbs)}
        nocount_ms = triton.testing.do_bench(lambda: tga._forward(g, u, activation, None))
        emit({**base, "config": "no counting (default tiles)", "ms": round(nocount_ms, 4),
              "frac_of_copy": round(3 * g.numel() * 2 / (nocount_ms * 1e-3) / 1e9 / copy_gbs, 3)}, args.out)
        for (block_t, block_f, warps), row_tiles, stages in itertools.product(TILES, ROW_TILES, STAGES):
            cfg = (block_t, block_f, warps, row_tiles, False, stages)
            got = counts()
            try:
                tga._forward(g, u, activation, got, cfg)
                equal = torch.equal(got.active, expected.active) and (
                    thresholds is None or torch.equal(got.above_threshold, expected.above_threshold))
                target = counts()
                ms = triton.testing.do_bench(lambda: tga._forward(g, u, activation, target, cfg))
            except Exception as err:  # a tile shape the compiler rejects (registers, shared memory)
                emit({**base, "config": list(cfg), "error": str(err).splitlines()[0][:200]}, args.out)
                continue
            emit({**base, "config": list(cfg), "counts_equal": equal, "ms": round(ms, 4),
                  "frac_of_copy": round(3 * g.numel() * 2 / (ms * 1e-3) / 1e9 / copy_gbs, 3)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

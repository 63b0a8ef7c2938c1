"""Sweep of the counting forward kernel: which tiles (BLOCK_T, BLOCK_F, warps, row tiles, pipeline
stages), which threshold compare (on the stored h, or on the fp32 product against a boundary) and
which SiLU math (fast with the exact fix-up, or exact) move the bytes fastest, for ReLU and SiLU at
the paper's FFN widths. Each point is a ``ForwardConfig`` launched through the kernel's public
``gated_activation_forward``. Needs a CUDA GPU.

Each configuration's counts are checked against the default configuration's (they must be equal:
integer atomics, any launch shape, any code variant), and its h against the uncounted h. Times
by replaying a CUDA graph of many calls (triton.testing.do_bench_cudagraph; --timer events for
do_bench); bandwidth counts reading g, u and writing h (3·T·f·2 bytes in bf16)
against a 2 GiB ``copy_``'s read + write bandwidth, timed the same way. In a CUDA graph that copy
runs on the copy engine, slower than an SM kernel, so graph-timed fractions read high: compare
rows of one run with each other (benchmarks/gated_activation_bench.py has the strict reference).
One JSON line per configuration.

Counting modes: "thresholds" (g > 0 and |h| >= τ, what training counts), "zero" (g > 0 only) and
"thresholds+mask" (both, with a row mask excluding 30% of the rows).

examples:
  python dev/kernels/count_tile_sweep.py
  python dev/kernels/count_tile_sweep.py --activations silu --widths 4480 --modes zero
  python dev/kernels/count_tile_sweep.py --tiles 16x64x4,8x64x2 --row-tiles 16,32 --stages 3
  python dev/kernels/count_tile_sweep.py --activations silu --silu-math fast --fix-ulps 32,64
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys

import torch
from json_lines import emit  # a sibling file: Python searches a script's own folder first

from megasparse.kernels.gated_activation import CountTarget
from megasparse.kernels.triton_gated_activation import (
    FAST_SILU_FIX_ULPS,
    ForwardConfig,
    gated_activation_forward,
)

# (BLOCK_T, BLOCK_F, num_warps) x ROW_TILES x STAGES; stages 1 and 2, 8 warps, and tiles of 64
# rows or 256 columns lost everywhere in the first sweep (H200, 2026-11-28).
TILES = [(16, 128, 4), (32, 128, 4)]
ROW_TILES = [4, 8, 16]
STAGES = [3, 4]  # both for "thresholds"; the other modes use 3 (Triton's default)
# thr_on_product. (Two more code paths were measured and dropped: fp32 tallies instead of packed
# int32, and register double buffering instead of Triton's pipeliner; neither won.)
CODES = [False, True]
MODES = ["thresholds", "zero", "thresholds+mask"]


def _copy_bandwidth_gbs(bench) -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy."""
    src = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (bench(lambda: dst.copy_(src)) * 1e-3) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--widths", type=lambda s: [int(x) for x in s.split(",")], default=[1920, 4480])
    p.add_argument("--activations", nargs="+", default=["relu", "silu"])
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument(
        "--tiles",
        default=",".join("x".join(map(str, t)) for t in TILES),
        help="BLOCK_TxBLOCK_FxWARPS list (default: %(default)s)",
    )
    p.add_argument("--row-tiles", default=",".join(map(str, ROW_TILES)), help="(default: %(default)s)")
    p.add_argument(
        "--stages",
        default=",".join(map(str, STAGES)),
        help="for mode 'thresholds'; the others use the first (default: %(default)s)",
    )
    p.add_argument(
        "--compares",
        default="product,stored",
        help="threshold compares to sweep: on the fp32 product against a bf16 boundary "
        "(the bf16 default) and/or on the stored h (default: %(default)s)",
    )
    p.add_argument(
        "--silu-math",
        default="fast,exact",
        help="SiLU code paths to sweep: fast (exp2/reciprocal with the exact fix-up, the "
        "bf16 default) and/or exact (libdevice exp, IEEE division) (default: %(default)s)",
    )
    p.add_argument(
        "--fix-ulps",
        default=str(FAST_SILU_FIX_ULPS),
        help="fix-up widths to sweep with the fast SiLU (default: %(default)s)",
    )
    p.add_argument(
        "--timer",
        choices=["graph", "events"],
        default="graph",
        help="CUDA graph replay (GPU time only) or CUDA events per call, with the L2 "
        "flushed in between (default: %(default)s)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import triton.testing

    if args.timer == "graph":  # GPU time only: no host launch gaps inside the timed region

        def bench(fn) -> float:
            return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    else:
        bench = triton.testing.do_bench
    copy_gbs = _copy_bandwidth_gbs(bench)  # its 4 GiB of buffers are freed on return
    gen = torch.Generator(device="cuda").manual_seed(0)
    for activation, f, mode in itertools.product(args.activations, args.widths, args.modes):
        g = torch.randn(args.tokens, f, device="cuda", dtype=torch.bfloat16, generator=gen)
        u = torch.randn(args.tokens, f, device="cuda", dtype=torch.bfloat16, generator=gen)
        thresholds = None if mode == "zero" else torch.rand(f, device="cuda", generator=gen) * 0.5
        row_mask = (torch.rand(args.tokens, device="cuda", generator=gen) > 0.3) if "mask" in mode else None

        def counts() -> CountTarget:
            z = torch.zeros(f, dtype=torch.int64, device="cuda")
            return CountTarget(
                active=z,
                tokens=torch.zeros((), dtype=torch.int64, device="cuda"),
                above_threshold=None if thresholds is None else z.clone(),
                thresholds=thresholds,
                row_mask=row_mask,
            )

        expected = counts()
        h_expected = gated_activation_forward(g, u, activation, expected)
        base = {
            "benchmark": "count_tile_sweep",
            "activation": activation,
            "tokens": args.tokens,
            "f": f,
            "mode": mode,
            "timer": args.timer,
            "copy_gbs": round(copy_gbs),
        }

        def frac(ms: float) -> float:
            return round(3 * g.numel() * 2 / (ms * 1e-3) / 1e9 / copy_gbs, 3)

        nocount_ms = bench(lambda: gated_activation_forward(g, u, activation, None))
        emit(
            {
                **base,
                "config": "no counting (default tiles)",
                "ms": round(nocount_ms, 4),
                "frac_of_copy": frac(nocount_ms),
            },
            args.out,
        )
        wanted = args.compares.split(",")
        codes = [c for c in CODES if ("product" if c else "stored") in wanted]
        codes = codes if thresholds is not None else [False]
        tiles = [tuple(int(x) for x in t.split("x")) for t in args.tiles.split(",")]
        row_tiles_swept = [int(x) for x in args.row_tiles.split(",")]
        stages_swept = [int(x) for x in args.stages.split(",")]
        stages_swept = stages_swept if mode == "thresholds" else stages_swept[:1]
        # (fast_silu, fix_ulps) variants
        silu_codes = [(False, FAST_SILU_FIX_ULPS)]
        if activation == "silu":
            maths = args.silu_math.split(",")
            silu_codes = [(True, int(k)) for k in args.fix_ulps.split(",") if "fast" in maths]
            silu_codes += [(False, FAST_SILU_FIX_ULPS)] if "exact" in maths else []
        for (block_t, block_f, warps), row_tiles, stages, on_product, (fast, ulps) in itertools.product(
            tiles, row_tiles_swept, stages_swept, codes, silu_codes
        ):
            try:
                cfg = ForwardConfig(
                    block_t=block_t,
                    block_f=block_f,
                    num_warps=warps,
                    row_tiles=row_tiles,
                    stages=stages,
                    thr_on_product=on_product,
                    fast_silu=fast,
                    fix_ulps=ulps,
                )
                got = counts()
                h = gated_activation_forward(g, u, activation, got, cfg)
                equal = (
                    torch.equal(h, h_expected)
                    and torch.equal(got.active, expected.active)
                    and (thresholds is None or torch.equal(got.above_threshold, expected.above_threshold))
                )
                target = counts()
                ms = bench(lambda: gated_activation_forward(g, u, activation, target, cfg))
            except Exception as err:  # an invalid config, or tiles the compiler rejects (registers, shared memory)
                emit(
                    {
                        **base,
                        "config": dict(
                            block_t=block_t,
                            block_f=block_f,
                            num_warps=warps,
                            row_tiles=row_tiles,
                            stages=stages,
                            thr_on_product=on_product,
                            fast_silu=fast,
                            fix_ulps=ulps,
                        ),
                        "error": str(err).splitlines()[0][:200],
                    },
                    args.out,
                )
                continue
            emit(
                {
                    **base,
                    "config": dataclasses.asdict(cfg),
                    "counts_equal": equal,
                    "ms": round(ms, 4),
                    "frac_of_copy": frac(ms),
                },
                args.out,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

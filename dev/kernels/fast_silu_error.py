"""How far the fast SiLU product (ex2.approx + rcp.approx) lies from PyTorch's exact one, over every
bf16 (g, u) pair, and how often the exact per-lane fix-up runs.

The forward kernel on bf16 computes p = σ(g)·u in fp32 with a fast exp2 and reciprocal and keeps it
unless p lies within ``fix_ulps`` fp32 steps of a bf16 rounding midpoint or g < -fix_min_g; then it
recomputes p exactly (see megasparse/kernels/triton_gated_activation.py). That is exact as long as
the fast p is never more than ``fix_ulps`` - 1 steps away from the exact p where g >= -fix_min_g.
This script measures that distance for all 2³² bf16 pairs (PyTorch's CUDA silu times u in fp32 is
the exact p), per range of g, and prints the smallest safe ``fix_ulps`` for a few ``fix_min_g``.
It also counts how many lanes take the fix-up, on all pairs and on N(0, σ²) data.

One JSON line per measurement. Needs a CUDA GPU (about 20 s on an H200).

examples:
  python dev/kernels/fast_silu_error.py
  python dev/kernels/fast_silu_error.py --chunk-rows 1024 --fix-ulps 32,64
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from json_lines import emit  # a sibling file: Python searches a script's own folder first

from megasparse.kernels.triton_gated_activation import FAST_SILU_FIX_MIN_G, FAST_SILU_PRODUCT_PTX

# Ranges of g (lower edges) for the distance table; the fix-up's g cut-off is one of them.
G_EDGES = [-float("inf"), -64.0, -32.0, -16.0, -8.0, -4.0, -1.0, 1.0, 4.0, 16.0]


def all_bf16() -> torch.Tensor:
    """Every bf16 bit pattern, as a [65536] bf16 tensor on the GPU."""
    return torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32, device="cuda").to(torch.int16).view(torch.bfloat16)


@triton.jit
def _fast_product_kernel(G, U, P, N, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    g = tl.load(G + i, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(U + i, mask=ok, other=0.0).to(tl.float32)
    p = tl.inline_asm_elementwise(FAST_SILU_PRODUCT_PTX, "=r,r,r", [g, u], dtype=tl.float32, is_pure=True, pack=1)
    tl.store(P + i, p, mask=ok)


def fast_product(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The kernel's fast fp32 p = σ(g)·u, elementwise, for contiguous bf16 g and u of one shape."""
    out = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    n = g.numel()
    _fast_product_kernel[(triton.cdiv(n, 1024),)](g, u, out, n, BLOCK=1024)
    return out


def step_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in fp32 steps (int64) where both are finite with the same sign bit; -1 elsewhere."""
    ia = a.view(torch.int32).long()
    ib = b.view(torch.int32).long()
    comparable = torch.isfinite(a) & torch.isfinite(b) & ((ia < 0) == (ib < 0))
    return torch.where(comparable, (ia - ib).abs(), torch.full_like(ia, -1))


def near_midpoint(p: torch.Tensor, ulps: int) -> torch.Tensor:
    low = p.view(torch.int32).long() & 0xFFFF
    return (low - 0x8000).abs() < ulps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunk-rows", type=int, default=2048, help="u values per chunk (default: %(default)s)")
    p.add_argument("--fix-ulps", default="16,32,64", help="fix-up widths to count lanes for")
    p.add_argument(
        "--fix-min-g",
        type=float,
        default=FAST_SILU_FIX_MIN_G,
        help="the kernel's g cut-off, for the lane counts (default: %(default)s)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("fast_silu_error: needs a CUDA GPU", file=sys.stderr)
        return 2
    ulps_list = [int(x) for x in args.fix_ulps.split(",")]
    values = all_bf16()  # [65536]
    g_row = values[None, :]  # g varies along columns, one u per row
    g32 = g_row.float()
    exact_s = F.silu(g32)  # [1, 65536] PyTorch's CUDA silu: the contract's bits
    bucket = torch.bucketize(g32, torch.tensor(G_EDGES[1:], device="cuda"), right=True)  # [1, 65536]
    worst = torch.full((len(G_EDGES),), -1, dtype=torch.int64, device="cuda")
    pairs = torch.zeros(len(G_EDGES), dtype=torch.int64, device="cuda")
    incomparable = 0
    fixups = {k: 0 for k in ulps_list}
    total = 0
    for start in range(0, values.numel(), args.chunk_rows):
        u = values[start : start + args.chunk_rows, None].expand(-1, values.numel())  # [R, 65536]
        g = g_row.expand_as(u).contiguous()
        u = u.contiguous()
        p_fast = fast_product(g, u)
        p_exact = exact_s * u.float()
        d = step_distance(p_fast, p_exact)
        both_nan = torch.isnan(p_fast) & torch.isnan(p_exact)
        in_range = g32 >= -args.fix_min_g  # [1, 65536]; the fix-up takes every other g
        incomparable += int(((d < 0) & ~both_nan & (p_fast != p_exact) & in_range).sum())
        b = bucket.expand_as(d)
        worst = torch.maximum(worst, torch.zeros_like(worst).scatter_reduce(0, b.flatten(), d.flatten(), "amax"))
        pairs += torch.bincount(b.flatten(), minlength=len(G_EDGES))
        for k in ulps_list:
            fixups[k] += int((near_midpoint(p_fast, k) | ~in_range).sum())
        total += d.numel()
        del u, g, p_fast, p_exact, d, b
    for i, lower in enumerate(G_EDGES):
        upper = G_EDGES[i + 1] if i + 1 < len(G_EDGES) else float("inf")
        emit(
            {
                "benchmark": "fast_silu_error",
                "g_from": lower,
                "g_to": upper,
                "pairs": int(pairs[i]),
                "max_fp32_steps": int(worst[i]),
            },
            args.out,
        )
    emit(
        {
            "benchmark": "fast_silu_error",
            "incomparable_pairs": incomparable,
            "fix_min_g": args.fix_min_g,
            "note": "pairs with g >= -fix_min_g where one p is finite and the other not, or signs differ",
        },
        args.out,
    )
    for cut in (4.0, 8.0, 16.0, 32.0):
        covered = [int(worst[i]) for i, lower in enumerate(G_EDGES) if lower >= -cut]
        emit(
            {
                "benchmark": "fast_silu_error",
                "fix_min_g": cut,
                "max_fp32_steps": max(covered),
                "smallest_safe_fix_ulps": max(covered) + 1,
            },
            args.out,
        )
    for k in ulps_list:
        emit(
            {
                "benchmark": "fast_silu_error",
                "data": "all bf16 pairs",
                "fix_ulps": k,
                "fix_min_g": args.fix_min_g,
                "lanes_fixed": fixups[k] / total,
            },
            args.out,
        )
    gen = torch.Generator(device="cuda").manual_seed(0)
    for sigma in (1.0, 3.0, 8.0):
        g = (torch.randn(1 << 26, device="cuda", generator=gen) * sigma).to(torch.bfloat16)
        u = torch.randn(1 << 26, device="cuda", generator=gen).to(torch.bfloat16)
        p_fast = fast_product(g, u)
        for k in ulps_list:
            lane = near_midpoint(p_fast, k) | ~(g.float() >= -args.fix_min_g)
            warp = lane.view(-1, 32).any(dim=1)  # one warp instruction covers 32 lanes' elements
            emit(
                {
                    "benchmark": "fast_silu_error",
                    "data": f"g ~ N(0, {sigma}^2), u ~ N(0, 1)",
                    "fix_ulps": k,
                    "fix_min_g": args.fix_min_g,
                    "lanes_fixed": float(lane.float().mean()),
                    "warp_instructions_diverging": float(warp.float().mean()),
                },
                args.out,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

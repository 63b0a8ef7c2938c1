"""Benchmark of the gated MLP's elementwise core h = σ(g) ⊙ u on one GPU, forward and backward.

Compares eager PyTorch, torch.compile, Liger-Kernel's SwiGLU (if installed) and our fused Triton
kernel with counting off / zero-threshold counting / threshold counting (+ row mask), and for SiLU
the forward with exact math throughout (``*_exact_silu``) against the default fast-and-fixed one.
Before timing each shape it checks on random data that our counts equal the PyTorch reference
exactly and that outputs and gradients are close (bitwise flags reported).

Timing: the forward of every variant, and our backward kernel launched directly (row
"bwd_kernel"), by replaying a CUDA graph of many calls (GPU time only; ``--timer events`` times
each call between CUDA events instead, which at these sizes also counts the host's launch gaps).
The backward of every variant through torch.autograd.grad (row "bwd") is timed with events.
Bandwidth is compared with the fastest of three 1 GiB copies (``copy_`` with events, ``copy_`` in
a graph, an SM kernel moving the same bytes in a graph), all recorded in the first line.

Bytes moved: forward reads g, u and writes h (3·T·f·elem); backward reads dh, g, u and writes
dg, du (5·T·f·elem). Counter traffic (a few f-long vectors) is ignored.

Output: one JSON object per line, then a short table. Exit code 1 if any correctness check failed.

Examples:
  python benchmarks/gated_activation_bench.py
  python benchmarks/gated_activation_bench.py --tokens 16384 --widths 2560,4480 --activations silu
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import traceback
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from megasparse.kernels.gated_activation import CountTarget, gated_activation_reference
from megasparse.kernels.triton_gated_activation import (
    INTERPRETED,
    forward_config,
    gated_activation_backward,
    gated_activation_forward,
    gated_activation_triton,
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ROWS: List[dict] = []


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    ROWS.append(record)


def bench_ms(fn: Callable[[], object]) -> float:
    """Median ms per call with CUDA events around each call (L2 flushed in between)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def graph_ms(fn: Callable[[], object]) -> float:
    """Median ms per call of a CUDA graph replaying many calls: GPU time only, without the host's
    launch overhead, which at these sizes (0.1-0.3 ms per call) can leave the GPU idle between
    the timing events and so reads as kernel time."""
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, rep=100, return_mode="median"))


TIMERS = {"events": bench_ms, "graph": graph_ms}


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            timeout=10,
        )
        return out.stdout.strip() or None
    except Exception:
        return None


def copy_bandwidths_gbs() -> Dict[str, float]:
    """Device memory bandwidth (bytes read + written) of a 1 GiB device-to-device copy, measured
    three ways: ``copy_`` timed with events (a memcpy), the same captured in a CUDA graph (where
    it becomes a copy-engine node, far slower), and an SM kernel moving the same bytes (``neg``)
    in a CUDA graph. The benchmark's reference is the fastest of them."""
    n = 1 << 29  # 1 GiB of bf16
    src = torch.randn(n, device="cuda", dtype=torch.float32).to(torch.bfloat16)
    dst = torch.empty_like(src)
    out = {
        "copy_events": bench_ms(lambda: dst.copy_(src)),
        "copy_graph": graph_ms(lambda: dst.copy_(src)),
        "sm_copy_graph": graph_ms(lambda: torch.neg(src, out=dst)),
    }
    return {k: 2 * n * 2 / (ms * 1e-3) / 1e9 for k, ms in out.items()}


def make_counts(f: int, t: int, thresholds: Optional[torch.Tensor], row_mask: Optional[torch.Tensor]):
    return CountTarget(
        active=torch.zeros(f, dtype=torch.int64, device="cuda"),
        tokens=torch.zeros((), dtype=torch.int64, device="cuda"),
        above_threshold=None if thresholds is None else torch.zeros(f, dtype=torch.int64, device="cuda"),
        thresholds=thresholds,
        row_mask=row_mask,
    )


def check_correctness(g, u, activation, thresholds, row_mask) -> dict:
    """Counts exactly equal to the reference; h and gradients close (bitwise flags reported)."""
    t, f = g.shape
    ours, ref = make_counts(f, t, thresholds, row_mask), make_counts(f, t, thresholds, row_mask)
    g1, u1 = g.clone().requires_grad_(), u.clone().requires_grad_()
    g2, u2 = g.clone().requires_grad_(), u.clone().requires_grad_()
    h = gated_activation_triton(g1, u1, activation, ours)
    h_ref = gated_activation_reference(g2, u2, activation, ref)
    dh = torch.randn_like(h)
    dg, du = torch.autograd.grad(h, (g1, u1), dh)
    dg_ref, du_ref = torch.autograd.grad(h_ref, (g2, u2), dh)
    result = {
        "counts_active_equal": bool(torch.equal(ours.active, ref.active)),
        "counts_above_equal": bool(torch.equal(ours.above_threshold, ref.above_threshold)),
        "tokens_equal": bool(torch.equal(ours.tokens, ref.tokens)),
        "h_bitwise": bool(torch.equal(h, h_ref)),
        "dg_bitwise": bool(torch.equal(dg, dg_ref)),
        "du_bitwise": bool(torch.equal(du, du_ref)),
        "active_ratio": float(ref.active.sum()) / max(1, int(ref.tokens)) / f,
        "above_ratio": float(ref.above_threshold.sum()) / max(1, int(ref.tokens)) / f,
    }
    close = True
    for a, b in ((h, h_ref), (dg, dg_ref), (du, du_ref)):
        try:
            torch.testing.assert_close(a, b, rtol=2**-7, atol=1e-5)
        except AssertionError:
            close = False
    result["close"] = close
    result["ok"] = close and result["counts_active_equal"] and result["counts_above_equal"] and result["tokens_equal"]
    return result


def eager_fn(activation: str):
    act = F.relu if activation == "relu" else F.silu
    return lambda g, u: act(g) * u


def variants(activation: str, f: int, t: int, dtype: torch.dtype, thresholds, row_mask) -> Dict[str, Callable]:
    """name -> fn(g, u) -> h. Counting variants keep accumulating into their own buffers."""
    out: Dict[str, Callable] = {"eager": eager_fn(activation)}
    # Without a reset, dynamo's per-code-object recompile limit (8) is reached after a few shapes
    # and torch.compile silently falls back to eager.
    torch._dynamo.reset()
    out["torch_compile"] = torch.compile(eager_fn(activation), dynamic=False)
    if activation == "silu":
        try:
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction

            out["liger_swiglu"] = LigerSiLUMulFunction.apply
        except Exception:
            pass
    out["triton_nocount"] = lambda g, u: gated_activation_triton(g, u, activation, None)
    c0 = make_counts(f, t, None, None)
    out["triton_count_zero"] = lambda g, u: gated_activation_triton(g, u, activation, c0)
    c1 = make_counts(f, t, thresholds, None)
    out["triton_count_thr"] = lambda g, u: gated_activation_triton(g, u, activation, c1)
    c2 = make_counts(f, t, thresholds, row_mask)
    out["triton_count_thr_mask"] = lambda g, u: gated_activation_triton(g, u, activation, c2)
    if activation == "silu":
        # The same launches with exact exp and division everywhere (what fp16, fp32 and GPUs without
        # the fast SiLU run), at the default launch's tiles: h and the counts are the same bits,
        # only the speed differs.
        def exact(count: bool):
            return dataclasses.replace(forward_config(f, activation, count, dtype, "cuda"), fast_silu=False)

        nocount_exact, count_exact = exact(False), exact(True)
        out["triton_nocount_exact_silu"] = lambda g, u: gated_activation_forward(g, u, activation, None, nocount_exact)
        c3 = make_counts(f, t, thresholds, None)
        out["triton_count_thr_exact_silu"] = lambda g, u: gated_activation_forward(g, u, activation, c3, count_exact)
    return out


# Backward does not depend on counting; time it once for our kernel.
BACKWARD_VARIANTS = ("eager", "torch_compile", "liger_swiglu", "triton_nocount")


def time_variant(name: str, fn: Callable, g, u, dh, elem: int, copy_gbs: float, base: dict, timer: str) -> None:
    """Forward with ``timer``; backward through autograd with events (row "bwd")."""
    t, f = g.shape
    fwd_bytes, bwd_bytes = 3 * t * f * elem, 5 * t * f * elem
    try:
        with torch.no_grad():
            fwd_ms = TIMERS[timer](lambda: fn(g, u))
        emit(
            {
                **base,
                "variant": name,
                "pass": "fwd",
                "ms": fwd_ms,
                "gbs": fwd_bytes / (fwd_ms * 1e-3) / 1e9,
                "frac_of_copy": fwd_bytes / (fwd_ms * 1e-3) / 1e9 / copy_gbs,
            }
        )
        if name not in BACKWARD_VARIANTS:
            return
        # Liger's backward writes its gradients into its inputs' buffers: give it private copies.
        gg, uu = g.clone().requires_grad_(), u.clone().requires_grad_()
        h = fn(gg, uu)
        bwd_ms = bench_ms(lambda: torch.autograd.grad(h, (gg, uu), dh, retain_graph=True))
        emit(
            {
                **base,
                "variant": name,
                "pass": "bwd",
                "ms": bwd_ms,
                "gbs": bwd_bytes / (bwd_ms * 1e-3) / 1e9,
                "frac_of_copy": bwd_bytes / (bwd_ms * 1e-3) / 1e9 / copy_gbs,
            }
        )
    except Exception as e:  # one broken baseline must not stop the run
        emit({**base, "variant": name, "error": f"{type(e).__name__}: {e}"[:300]})
        traceback.print_exc(file=sys.stderr)


def time_backward_kernel(activation: str, g, u, dh, elem: int, copy_gbs: float, base: dict, timer: str) -> None:
    """Our backward kernel launched directly (no autograd), with ``timer`` (row "bwd_kernel")."""
    t, f = g.shape
    ms = TIMERS[timer](lambda: gated_activation_backward(dh, g, u, activation))
    gbs = 5 * t * f * elem / (ms * 1e-3) / 1e9
    emit(
        {
            **base,
            "variant": "triton_nocount",
            "pass": "bwd_kernel",
            "ms": ms,
            "gbs": gbs,
            "frac_of_copy": gbs / copy_gbs,
        }
    )


def print_table() -> None:
    rows = [r for r in ROWS if "variant" in r and "ms" in r]
    if not rows:
        return
    print("\nactivation  f      variant                 pass   ms       GB/s    of copy")
    for r in rows:
        print(
            f"{r['activation']:<11} {r['f']:<6} {r['variant']:<23} {r['pass']:<6} "
            f"{r['ms']:<8.4f} {r['gbs']:<7.0f} {r['frac_of_copy']:.0%}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8 * 4096, help="rows T (default 8×4096)")
    parser.add_argument("--widths", default="1920,2560,3200,3840,4480", help="comma-separated f values")
    parser.add_argument("--activations", default="relu,silu")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument(
        "--timer",
        choices=sorted(TIMERS),
        default="graph",
        help="forward and backward-kernel timing: CUDA graph replay (GPU time only) "
        "or CUDA events per call; backward through autograd always uses events "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commit", default=None, help="commit to record (default: git rev-parse)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gated_activation_bench: needs a CUDA GPU (none found)", file=sys.stderr)
        return 2
    if INTERPRETED:
        print("gated_activation_bench: unset TRITON_INTERPRET to benchmark compiled kernels", file=sys.stderr)
        return 2

    import triton

    dtype = DTYPES[args.dtype]
    elem = torch.tensor([], dtype=dtype).element_size()
    copies = copy_bandwidths_gbs()
    copy_gbs = max(copies.values())  # the strictest reference
    env = {
        "kind": "env",
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": args.commit or git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "timer": args.timer,
        "copy_gbs": copy_gbs,
        **{f"{k}_gbs": v for k, v in copies.items()},
    }
    emit(env)

    torch.manual_seed(args.seed)
    all_ok = True
    t = args.tokens
    for activation in args.activations.split(","):
        for f in (int(x) for x in args.widths.split(",")):
            base = {"activation": activation, "T": t, "f": f, "dtype": args.dtype}
            g = torch.randn(t, f, device="cuda").to(dtype)
            u = torch.randn(t, f, device="cuda").to(dtype)
            dh = torch.randn(t, f, device="cuda").to(dtype)
            thresholds = (torch.rand(f, device="cuda") * 0.5).contiguous()
            row_mask = torch.rand(t, device="cuda") > 0.05
            check = check_correctness(g, u, activation, thresholds, row_mask)
            emit({**base, "kind": "check", **check})
            if not check["ok"]:
                all_ok = False
                continue  # never time a kernel that computes the wrong thing
            for name, fn in variants(activation, f, t, dtype, thresholds, row_mask).items():
                time_variant(name, fn, g, u, dh, elem, copy_gbs, base, args.timer)
            time_backward_kernel(activation, g, u, dh, elem, copy_gbs, base, args.timer)
            del g, u, dh
            torch.cuda.empty_cache()
    print_table()
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Why the fused q/k/v rotary's backward kernel is slow at the 1.2B shape (a diagnostic).

The 1.2B profile (micro-batch 16, every fast-path switch) shows the compiled backward of
``split_qkv_rotary`` at about 0.77 ms per layer, while it moves 1.4 GB (reads dq, dk, dv; writes
d(qkv)), 0.34 ms at the copy bandwidth. Suspect: the layout of the gradients SDPA's backward hands
it. This script, on one GPU at the attention shape of one layer:

1. runs the fast path's attention core (compiled split + rotary, SDPA on [b, h, s, hd] views,
   output viewed back to [b, s, h·hd]) forward and backward, and records the strides of the
   gradients that reach q, k and v;
2. times the compiled rotary backward alone (``torch.autograd.grad`` of its three outputs) with
   gradients given in the [b, s, h, hd] layout and in the [b, h, s, hd] layout;
3. times the whole core forward + backward.

One JSON line per measurement (CUDA events, median of ``--repeats``).

Result on an H200 (benchmarks/RESULTS.md §14): SDPA's backward hands the gradients in the
contiguous [b, s, h, hd] layout, and the kernel alone still takes 0.92 ms (1.5 TB/s) with them
(1.85 ms with [b, h, s, hd] gradients): the layout is not the cause, the generated kernel is.

    python dev/attention_core_layouts.py                 # 1.2B: b 16, s 4096, 14 heads × 128
    python dev/attention_core_layouts.py --batch 64 --heads 6   # 0.1B at micro-batch 64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from megasparse.model.rotary import rotary_cos_sin, split_qkv_rotary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_common import timed  # noqa: E402  (median ms of CUDA-event-timed calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    b, s, h, hd = args.batch, args.seq, args.heads, args.head_dim
    dev, dt = torch.device("cuda"), torch.bfloat16
    torch.manual_seed(0)
    split = torch.compile(split_qkv_rotary, dynamic=False)
    cos, sin = rotary_cos_sin(torch.arange(s, device=dev), hd, 10000.0, dt)  # [1, s, hd] each
    qkv = torch.randn(b, s, 3, h, hd, device=dev, dtype=dt, requires_grad=True)
    grad_out = torch.randn(b, s, h * hd, device=dev, dtype=dt)
    bytes_moved = 2 * qkv.numel() * qkv.element_size()  # read dq, dk, dv; write d(qkv)

    def emit(record: dict) -> None:
        print(json.dumps({"shape": [b, s, h, hd], **record}), flush=True)

    # 1. The strides of the gradients SDPA's backward gives q, k, v.
    seen = {}
    q, k, v = split(qkv, cos, sin)  # [b, s, h, hd] each
    for name, t in (("q", q), ("k", k), ("v", v)):
        t.register_hook(lambda g, name=name: seen.__setitem__(name, list(g.stride())))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    out.transpose(1, 2).reshape(b, s, -1).backward(grad_out)
    emit(
        {
            "what": f"grad strides reaching q/k/v (bshd contiguous is {[s * h * hd, h * hd, hd, 1]})",
            "strides": seen,
            "out_strides": list(out.stride()),
        }
    )

    # 2. The rotary backward alone, gradients in either layout.
    q, k, v = split(qkv, cos, sin)
    grads_bshd = [torch.randn(b, s, h, hd, device=dev, dtype=dt) for _ in range(3)]
    grads_bhsd = [g.transpose(1, 2).contiguous().transpose(1, 2) for g in grads_bshd]  # same values
    for layout, grads in (("bshd", grads_bshd), ("bhsd", grads_bhsd)):
        ms = timed(lambda: torch.autograd.grad((q, k, v), qkv, grads, retain_graph=True), args.repeats)
        emit(
            {
                "what": f"rotary backward alone, grads {layout}",
                "ms": round(ms, 4),
                "gb_per_s": round(bytes_moved / ms / 1e6, 1),
            }
        )

    # 3. The whole core, forward + backward.
    def core() -> None:
        q, k, v = split(qkv, cos, sin)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        o.transpose(1, 2).reshape(b, s, -1).backward(grad_out)

    emit({"what": "core forward + backward", "ms": round(timed(core, args.repeats), 4)})

    # 4. The kernels of one core call, by device time.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        core()
        torch.cuda.synchronize()
    kernels = sorted(
        ((e.device_time_total / 1e3, e.key) for e in prof.key_averages() if e.device_time_total > 0), reverse=True
    )
    emit({"what": "core kernels (ms)", "kernels": [[round(t, 4), name[:100]] for t, name in kernels[:12]]})


if __name__ == "__main__":
    main()

"""Causal attention forward + backward under each SDPA backend, at the paper's training shapes.

Times ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` forward and backward with each
backend forced (flash, cuDNN, memory-efficient), checks each against the flash result, and
prints one JSON line per (shape, backend): milliseconds and TFLOP/s counting the causal half only
(4·b·h·s²·hd / 2 forward; forward + backward counted as 3.5× that, since the backward does five
matmuls to the forward's two).

examples:
  python benchmarks/attention_backends.py
  python benchmarks/attention_backends.py --shapes 8x6x4096x128 --out /tmp/attn.jsonl
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from bench_common import emit, timed
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}
# (batch, heads, seq, head_dim): 0.1B at micro-batch 8 and 16, 1.2B at micro-batch 4 and 8.
DEFAULT_SHAPES = ["8x6x4096x128", "16x6x4096x128", "4x14x4096x128", "8x14x4096x128"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="BxHxSxD")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None, help="append JSON lines here too")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("attention_backends: needs a CUDA GPU", file=sys.stderr)
        return 2
    for spec in args.shapes:
        b, h, s, d = (int(x) for x in spec.split("x"))
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
        grad_out = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        causal_fwd_flops = 4 * b * h * s * s * d / 2
        reference = None
        for name, backend in BACKENDS.items():
            leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]

            def forward():
                return F.scaled_dot_product_attention(*leaves, is_causal=True)

            def forward_backward():
                out = forward()
                out.backward(grad_out)
                return out

            record = {"benchmark": "attention_backends", "shape": spec, "backend": name}
            try:
                with sdpa_kernel([backend]):
                    out = forward_backward()
                    grads = [t.grad.clone() for t in leaves]
                    fwd_ms = timed(forward, args.repeats)
                    total_ms = timed(forward_backward, args.repeats)
            except RuntimeError as err:  # the backend does not support this shape / GPU
                emit({**record, "error": str(err).splitlines()[0][:300]}, args.out)
                continue
            if reference is None:
                reference = (out.float(), [g.float() for g in grads])
            record.update(
                {
                    "forward_ms": round(fwd_ms, 3),
                    "forward_backward_ms": round(total_ms, 3),
                    "forward_tflops": round(causal_fwd_flops / fwd_ms / 1e9, 1),
                    "forward_backward_tflops": round(3.5 * causal_fwd_flops / total_ms / 1e9, 1),
                    "max_abs_diff_vs_flash": round(float((out.float() - reference[0]).abs().max()), 5),
                    "max_abs_grad_diff_vs_flash": round(
                        max(float((g.float() - r).abs().max()) for g, r in zip(grads, reference[1])), 5
                    ),
                }
            )
            emit(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The output head + cross-entropy of one micro-batch, forward and backward, three ways.

  full      ``F.cross_entropy(F.linear(h, W).float(), y)`` with autograd (the plain path);
  chunked   ``linear_cross_entropy(..., impl="reference")``: chunks, softmax in fp32 PyTorch ops;
  fused     ``linear_cross_entropy(..., impl="triton")``: chunks, one Triton kernel per chunk
            that turns the bf16 logits into the loss and their gradient in place.

Also times the fused kernel alone and reports its bandwidth against the device's copy bandwidth
(bytes: read the logits twice, write them once). One JSON line per case.

examples:
  python benchmarks/cross_entropy_bench.py
  python benchmarks/cross_entropy_bench.py --tokens 16384 --hidden 1792 --chunk 8192
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from bench_common import emit, timed

from megasparse.kernels.linear_cross_entropy import linear_cross_entropy
from megasparse.kernels.triton_cross_entropy import cross_entropy_rows_


def copy_bandwidth_gbs() -> float:
    """Read + write GB/s of a large device-to-device copy (the attainable memory bandwidth)."""
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = timed(lambda: dst.copy_(src), 10)
    return 2 * src.numel() / ms / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=32768, help="tokens of the micro-batch (0.1B: 8 × 4096)")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--vocab", type=int, default=122880, help="the padded vocabulary")
    p.add_argument("--chunk", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="append JSON lines here too")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("cross_entropy_bench: needs a CUDA GPU", file=sys.stderr)
        return 2
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, device="cuda", dtype=torch.bfloat16, generator=gen)
    weight = (torch.randn(args.vocab, args.hidden, device="cuda", generator=gen) * 0.02).to(torch.bfloat16)
    labels = torch.randint(0, args.vocab, (args.tokens,), device="cuda", generator=gen)
    base = {
        "benchmark": "cross_entropy",
        "tokens": args.tokens,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "chunk": args.chunk,
    }

    def full(h, w):
        return F.cross_entropy(F.linear(h, w).float(), labels)

    cases = {
        "full": full,
        "chunked": lambda h, w: linear_cross_entropy(h, w, labels, chunk_tokens=args.chunk, impl="reference"),
        "fused": lambda h, w: linear_cross_entropy(h, w, labels, chunk_tokens=args.chunk, impl="triton"),
    }
    losses = {}
    for name, fn in cases.items():
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()

        def step():
            h.grad = w.grad = None
            loss = fn(h, w)
            loss.backward()
            return loss

        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        try:
            losses[name] = float(step())
            ms = timed(step, args.repeats)
        except torch.OutOfMemoryError:
            emit({**base, "case": name, "error": "out of memory"}, args.out)
            continue
        emit(
            {
                **base,
                "case": name,
                "forward_backward_ms": round(ms, 3),
                "loss": losses[name],
                "peak_extra_gb": round((torch.cuda.max_memory_allocated() - before) / 1e9, 2),
            },
            args.out,
        )

    # The kernel alone on one chunk of bf16 logits (re-filled each time: it works in place).
    z0 = torch.randn(args.chunk, args.vocab, device="cuda", dtype=torch.bfloat16, generator=gen) * 4
    z = torch.empty_like(z0)
    chunk_labels = labels[: args.chunk]
    inv_n = torch.full((1,), 1.0 / args.chunk, device="cuda")
    refill_ms = timed(lambda: z.copy_(z0), args.repeats)
    kernel_ms = (
        timed(lambda: (z.copy_(z0), cross_entropy_rows_(z, chunk_labels, inv_n, -100, True)), args.repeats) - refill_ms
    )
    bandwidth = 3 * z.numel() * z.element_size() / kernel_ms / 1e6
    copy_gbs = copy_bandwidth_gbs()
    emit(
        {
            **base,
            "case": "fused_kernel_alone",
            "kernel_ms": round(kernel_ms, 3),
            "gb_per_s": round(bandwidth),
            "copy_gb_per_s": round(copy_gbs),
            "fraction_of_copy": round(bandwidth / copy_gbs, 3),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

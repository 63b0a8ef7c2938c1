"""Compiles the gated-activation forward kernel for an H100/H200 (sm_90) without a GPU and reports
what the hardware will execute: registers per thread, and instructions per element in the row-tile
loop (or, for a single-tile program, in the whole program), from the SASS that Triton's own
ptxas and cuobjdump produce. The division's slow-path subroutine, which random inputs never take,
is not counted. For the fast SiLU (the default on bf16) it also reports the common path: the
instructions a lane executes when it skips the exact fix-up blocks (about 1 lane in 500 enters one).

Use it to compare counting-code variants before spending GPU time: where the counting forward is
limited by instruction issue rather than by memory (the exact-math SiLU counting kernel was, under
ncu), fewer instructions per element make it faster. Counts it produced: benchmarks/RESULTS.md §2b.

examples:
  python dev/kernels/kernel_sass.py                                 # SiLU, counting with thresholds
  python dev/kernels/kernel_sass.py --exact-silu                    # the same with exact exp/division
  python dev/kernels/kernel_sass.py --activation relu --tile 32x128x4 --row-tiles 4
  python dev/kernels/kernel_sass.py --no-count --tile 16x128x4 --row-tiles 1 --histogram
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Triton decides interpreted-or-compiled when it is first imported, so check before importing it.
if os.environ.get("TRITON_INTERPRET"):
    sys.exit("kernel_sass.py: unset TRITON_INTERPRET (it compiles real GPU code)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from megasparse.kernels.triton_gated_activation import (  # noqa: E402
    ForwardConfig,
    forward_kernel_constants,
    gated_act_fwd_kernel,
)

TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_INSTRUCTION = re.compile(r"\s+/\*([0-9a-f]{4})\*/\s+(.*?);")


def compile_forward(activation: str, count: bool, thresholds: bool, row_mask: bool, config: ForwardConfig) -> bytes:
    """The cubin of one forward-kernel launch for sm_90, bf16 tensors, f divisible by 16."""
    kernel = gated_act_fwd_kernel
    types = {
        "G": "*bf16",
        "U": "*bf16",
        "H": "*bf16",
        "ACTIVE": "*i64",
        "ABOVE": "*i64",
        "TOKENS": "*i64",
        "THRESHOLDS": "*fp32",
        "ROW_MASK": "*i32",
        "T": "i32",
        "F": "i32",
        "STRIDE": "i32",
    }
    constants = forward_kernel_constants(
        activation,
        config,
        torch.bfloat16,
        torch.bfloat16,
        count=count,
        thresholds=thresholds,
        row_mask=row_mask,
        compiled=True,
    )
    names = list(kernel.arg_names)
    signature = {name: types.get(name, "constexpr") for name in names}
    # Pointers and sizes divisible by 16, as at real launches with f % 16 == 0.
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in types}
    source = ASTSource(
        fn=kernel, signature=signature, attrs=attrs, constexprs={(names.index(k),): v for k, v in constants.items()}
    )
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": config.num_warps})
    return compiled.asm["cubin"]


def analyse(cubin: bytes, elements_per_thread: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run(
            [str(TOOLS / "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run(
            [str(TOOLS / "cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True
        ).stdout
    code = [(int(m.group(1), 16), m.group(2).strip()) for m in map(_INSTRUCTION.match, sass.splitlines()) if m]
    backward = [
        (int(t.group(1), 16), address)
        for address, text in code
        if "BRA" in text
        for t in [re.search(r"0x([0-9a-f]+)", text)]
        if t and int(t.group(1), 16) < address
    ]
    if backward:  # the row-tile loop: from the target of its backward branch to the branch
        start, end = backward[0]
        body = [(address, text) for address, text in code if start <= address <= end]
    else:  # straight-line program: up to its last EXIT (the slow-path subroutine follows)
        last_exit = max(i for i, (_, text) in enumerate(code) if "EXIT" in text)
        body = code[: last_exit + 1]
    # The fast SiLU's exact fix-ups: forward predicated branches over a block that holds an exp
    # (MUFU.EX2). A lane enters one only near a bf16 rounding midpoint, so the common path skips them.
    fixups = []
    for address, text in body:
        target = re.search(r"BRA 0x([0-9a-f]+)", text)
        if text.startswith("@") and target and int(target.group(1), 16) > address:
            skipped = [t for a, t in body if address < a < int(target.group(1), 16)]
            if any("MUFU.EX2" in t for t in skipped):
                fixups.append((address, int(target.group(1), 16)))
    common = [text for address, text in body if not any(a < address < t for a, t in fixups)]
    opcodes = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0] for text in common)
    return {
        "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
        "loop": bool(backward),
        "instructions": len(body),
        "per_element": round(len(body) / elements_per_thread, 2),
        "fixup_blocks": len(fixups),
        "common_path": len(common),
        "common_per_element": round(len(common) / elements_per_thread, 2),
        "histogram": dict(opcodes.most_common()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--activation", choices=["relu", "silu"], default="silu")
    p.add_argument("--no-count", action="store_true", help="the kernel without counting code")
    p.add_argument("--no-thresholds", action="store_true", help="count g > 0 only")
    p.add_argument("--row-mask", action="store_true")
    p.add_argument("--tile", default="16x64x4", help="BLOCK_TxBLOCK_FxWARPS (default: %(default)s)")
    p.add_argument("--row-tiles", type=int, default=16)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument(
        "--exact-silu",
        action="store_true",
        help="SiLU with libdevice exp and IEEE division everywhere (default: the fast "
        "exp2/reciprocal with the exact per-lane fix-up, as bf16 training runs)",
    )
    p.add_argument("--histogram", action="store_true", help="also print instructions by opcode")
    args = p.parse_args()
    block_t, block_f, warps = (int(x) for x in args.tile.split("x"))
    count, thresholds = not args.no_count, not args.no_thresholds
    # The launch bf16 training runs (threshold compare on the product, fast SiLU), at these tiles.
    config = ForwardConfig(
        block_t=block_t,
        block_f=block_f,
        num_warps=warps,
        row_tiles=args.row_tiles,
        stages=args.stages,
        thr_on_product=count and thresholds,
        fast_silu=args.activation == "silu" and not args.exact_silu,
    )
    cubin = compile_forward(args.activation, count, thresholds, args.row_mask, config)
    report = analyse(cubin, block_t * block_f / (32 * warps))
    if not args.histogram:
        report.pop("histogram")
    print(
        json.dumps(
            {
                "activation": args.activation,
                "count": not args.no_count,
                "thresholds": not args.no_thresholds,
                "row_mask": args.row_mask,
                "exact_silu": args.exact_silu,
                "tile": args.tile,
                "row_tiles": args.row_tiles,
                "stages": args.stages,
                **report,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

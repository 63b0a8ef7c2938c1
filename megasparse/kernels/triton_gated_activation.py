"""Fused Triton kernels for the gated MLP's elementwise core ``h = σ(g) ⊙ u``, with in-kernel
activation counters.

Contract (the same as :func:`megasparse.kernels.gated_activation.gated_activation_reference`):

* forward: σ(g) and the product in fp32, ``h`` rounded once to the input dtype;
* counting (only when a :class:`CountTarget` is given): per neuron (column) the number of counted
  rows with ``g > 0``, and with ``|h| ≥ thresholds[col]`` where h is the *stored* (rounded) value;
  rows with ``row_mask == False`` are not counted; ``tokens`` grows by the number of counted rows;
* backward: σ is recomputed from the saved g and u (no stored activation), dg and du in one pass,
  in fp32, cast to the input dtypes. Counting never happens in backward.

How the counters are made cheap:
* ``COUNT`` is a ``tl.constexpr``: with counting off the compiled kernel has no counting code.
* Each counting program owns a column block of ``BLOCK_F`` neurons and ``ROW_TILES`` consecutive
  row tiles of ``BLOCK_T`` rows. It keeps a per-element int32 tally in registers (both counters
  packed in one int32: active in the low, above-threshold in the high 16 bits), reduces it over
  rows ONCE at the end, and issues ONE relaxed atomic add per column and counter — never one
  atomic per element (the known trap), and never a cross-warp reduction per tile.
* With a bf16 output the threshold counter compares the fp32 product, which it already holds,
  with a per-column boundary derived once per program from τ and bf16's rounding rule (see
  ``_bf16_count_boundary``), instead of unpacking the stored bf16 h again: the same answer for
  every value, ties included, one instruction less per element.
* ``tokens`` is counted in the same launch: the programs of the first column block add their
  counted rows with one atomic each, so a counting call is one kernel launch.
* The atomics go straight into the int64 target (no int32 partial buffer and second launch):
  after the in-program reduction there are only ``ceil(T / (BLOCK_T·ROW_TILES)) · f`` of them, so
  the lower throughput of 64-bit atomics does not matter and we save a launch and a buffer.
  int32 targets are accepted too. Integer atomics are associative, so counts are exact and
  independent of the launch configuration and of scheduling.

SiLU matches PyTorch's formula ``g / (1 + exp(-g))`` bit for bit on the GPU, so that h (and hence
the threshold counts) agree with the reference:
* exact math (fp32 / fp16 tensors, and the backward): libdevice ``expf`` and a correctly rounded
  division, as PyTorch's CUDA kernel does;
* fast-and-fixed (the forward on bf16 tensors, what training runs): a fast ``exp2`` and reciprocal
  (two MUFU instructions) give an fp32 product p that may be a few ulps off the exact one. Only the
  bf16 rounding of p and the threshold compare use p, and both can change only if p lies within a
  few ulps of a bf16 rounding midpoint (every count boundary is one, see ``_bf16_count_boundary``).
  So a lane whose p lands within ``FAST_SILU_FIX_ULPS`` fp32 steps of a midpoint, or whose g lies
  outside the range where that bound holds, branches to the exact computation (about one lane in
  1000 on N(0, 1) data; see ``_silu_fixup_ptx``). Proven exhaustively on an H200 for all 2³² bf16
  (g, u) pairs (``tests/kernels/test_gated_activation.py::test_gpu_fast_silu_all_bf16_pairs``);
  GPU generations other than those in ``_FAST_SILU_PROVEN_ON`` keep exact math.
Under ``TRITON_INTERPRET=1`` (numpy) ``tl.exp`` and plain division are used instead: the
interpreter has no libdevice and runs no PTX.

Public entry points: :func:`gated_activation_triton` (what the model calls, differentiable);
:func:`gated_activation_forward` / :func:`gated_activation_backward` (one launch on [T, f] views,
for benchmarks and tests); :func:`forward_config` (the launch the dispatch chooses) and
:class:`ForwardConfig` (to launch another one); :func:`forward_kernel_constants` with
``gated_act_fwd_kernel`` (for tools that compile the kernel themselves).
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from megasparse.kernels.gated_activation import Activation, CountTarget

try:  # libdevice exists only for real CUDA compilation
    from triton.language.extra.cuda import libdevice
except ImportError:  # pragma: no cover - very old/odd triton builds
    libdevice = None

_ACTIVATION_CODES = {"relu": 0, "silu": 1}


@triton.jit
def _exp(x, PRECISE: tl.constexpr):
    if PRECISE:
        return libdevice.exp(x)
    else:
        return tl.exp(x)


@triton.jit
def _div(x, y, PRECISE: tl.constexpr):
    # Triton's plain '/' on fp32 is an approximate (2-ulp) division on NVIDIA; PyTorch's is IEEE.
    if PRECISE:
        return tl.math.div_rn(x, y)
    else:
        return x / y


# Fast fp32 σ(g)·u for SiLU: ex2.approx and rcp.approx, every other step rounded to nearest (.rn
# also keeps ptxas from contracting the multiplies and adds into FMAs). $0 = p, $1 = g, $2 = u.
# Public so that dev/kernels/fast_silu_error.py measures exactly these instructions.
FAST_SILU_PRODUCT_PTX = tl.constexpr("""{
.reg .b32 t;
mul.rn.f32 t, $1, 0fBFB8AA3B;
ex2.approx.ftz.f32 t, t;
add.rn.f32 t, t, 0f3F800000;
rcp.approx.ftz.f32 t, t;
mul.rn.f32 t, $1, t;
mul.rn.f32 $0, t, $2;
}""")

# The exact fix-up's defaults: a lane takes the exact path when its fast p lies within
# FAST_SILU_FIX_ULPS fp32 steps of a bf16 rounding midpoint, or when g < -FAST_SILU_FIX_MIN_G (or g
# is NaN). The fast exp2's error grows with |g| for negative g (its argument -g·log2(e) is rounded
# to fp32): over all bf16 (g, u) pairs on an H200 the fast p was at most 5 fp32 steps from the
# exact one for g >= -4, 14 for g >= -16, 27 for g >= -32 and 54 for g >= -64
# (benchmarks/RESULTS.md §2b). 32 steps for g >= -32 fixes about 1 lane in 1000 on N(0, 1) data;
# the GPU test checks the pair against every bf16 (g, u).
FAST_SILU_FIX_ULPS = 32
FAST_SILU_FIX_MIN_G = 32.0
# GPU generations (compute capability major) on which that exhaustive check was run: the fast
# path depends on the hardware's ex2.approx / rcp.approx, so other GPUs use exact math.
_FAST_SILU_PROVEN_ON = {9}


def _exact_silu_product_ptx(p: str, g: str, u: str) -> str:
    """PTX computing p = (g / (1 + exp(-g))) · u exactly as ``libdevice.exp`` + ``div_rn`` and one
    multiply compile (PyTorch's bits); uses the scratch registers c, x, t."""
    return f"""sub.rn.f32 x, 0f00000000, {g};
fma.rn.ftz.f32 c, x, 0f3BBB989D, 0f3F000000;
cvt.ftz.sat.f32.f32 c, c;
fma.rm.ftz.f32 c, c, 0f437C0000, 0f4B400001;
add.rn.f32 t, c, 0fCB40007F;
neg.f32 t, t;
fma.rn.ftz.f32 t, x, 0f3FB8AA3B, t;
fma.rn.ftz.f32 t, x, 0f32A57060, t;
shl.b32 c, c, 23;
ex2.approx.ftz.f32 t, t;
fma.rn.f32 t, t, c, 0f3F800000;
div.rn.f32 t, {g}, t;
mul.rn.f32 {p}, t, {u};
"""


@functools.lru_cache(maxsize=None)
def _silu_fixup_ptx(ulps: int, min_g: float) -> str:
    """PTX for one element: output $0 = p, from inputs $1 = g, $2 = u and $3 = the fast p. It keeps
    the fast p unless p's low 16 bits lie within ``ulps`` of 0x8000 (a bf16 rounding midpoint) or
    g < -min_g or g is NaN; then it recomputes p exactly. The branch is per lane: ptxas makes a
    divergent region of it, so only warps with such a lane pay for it. Labels inside ``{ }`` are
    local to that block, so every inlined copy may use the same name."""
    neg_min_g = struct.unpack("<I", struct.pack("<f", -float(min_g)))[0]
    return f"""{{
.reg .pred near, out, any;
.reg .b32 c, x, t;
mov.b32 $0, $3;
add.s32 c, $3, {ulps - 0x8000};
and.b32 c, c, 65535;
setp.lt.u32 near, c, {2 * ulps};
setp.ltu.f32 out, $1, 0f{neg_min_g:08X};
or.pred any, near, out;
@!any bra LEXACTDONE;
{_exact_silu_product_ptx("$0", "$1", "$2")}LEXACTDONE:
}}"""


@triton.jit
def _silu_product(g, u, PRECISE: tl.constexpr, FIXUP_ASM: tl.constexpr):
    """fp32 σ(g)·u for SiLU (g, u: fp32 tensors of one shape); FIXUP_ASM "" = no fast path."""
    if FIXUP_ASM != "":
        p = tl.inline_asm_elementwise(FAST_SILU_PRODUCT_PTX, "=r,r,r", [g, u], dtype=tl.float32, is_pure=True, pack=1)
        return tl.inline_asm_elementwise(FIXUP_ASM, "=r,r,r,r", [g, u, p], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return _div(g, 1.0 + _exp(-g, PRECISE), PRECISE) * u


@triton.jit
def _to_dtype(x, DTYPE: tl.constexpr, ROUND_BF16: tl.constexpr):
    """fp32 -> DTYPE with round-to-nearest-even.

    ROUND_BF16 is set only under the interpreter, whose fp32->bf16 cast truncates: we round the
    bit pattern by hand (NaN payloads aside) so that the later cast is exact. Compiled code uses the
    hardware's round-to-nearest-even conversion.
    """
    if ROUND_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


# Both counters share one int32 tally per element: active in the low 16 bits, above-threshold in
# the high 16 bits. One add per element instead of two, and one cross-warp column reduction per
# program instead of two. Exact while a program covers < 2**16 rows (checked on the host).
_ABOVE_SHIFT = 16


@triton.jit
def _bf16_count_boundary(thr):
    """Per column, the fp32 value b such that, for every fp32 product p,
    ``|round_bf16(p)| >= thr``  ⇔  ``|p| >= b``  (thr: [BF] fp32; b: [BF] fp32).

    This lets the threshold counter compare the fp32 product it already holds instead of
    unpacking the stored bf16 value again. For thr > 0: let t be the smallest bf16 value >= thr
    (thr rounded up to bf16's 16-bit mantissa grid). p rounds to >= t exactly when |p| lies at or
    above the midpoint between t and the bf16 value below it; at the midpoint itself
    round-to-nearest-even picks t only if t's mantissa is even, so an odd t moves the boundary one
    fp32 step up. thr <= 0 counts every non-NaN value and a NaN thr counts none: both are kept as
    they are. thr = +inf gives the midpoint between bf16's largest finite value and inf, which is
    where rounding overflows to inf.
    """
    bits = thr.to(tl.int32, bitcast=True)
    up = tl.where((bits & 0xFFFF) == 0, bits, (bits | 0xFFFF) + 1)  # t, as fp32 bits
    mid = up - 0x8000 + ((up >> 16) & 1)
    return tl.where(thr > 0.0, mid.to(tl.float32, bitcast=True), thr)


@triton.jit
def _fwd_row_tile(
    G,
    U,
    H,
    ROW_MASK,
    THR_ROW,
    tally,
    row0,
    cols,
    col_ok,
    T,
    F,
    ACTIVATION: tl.constexpr,
    COUNT: tl.constexpr,
    HAS_THRESHOLDS: tl.constexpr,
    HAS_ROW_MASK: tl.constexpr,
    PRECISE: tl.constexpr,
    FIXUP_ASM: tl.constexpr,
    ROUND_H: tl.constexpr,
    THR_ON_PRODUCT: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    rows = row0 + tl.arange(0, BLOCK_T)  # [BT]
    row_ok = rows < T
    offs = rows.to(tl.int64)[:, None] * F + cols[None, :]  # [BT, BF]; int64: T·F may pass 2³¹
    mask = row_ok[:, None] & col_ok[None, :]
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    # Out-of-range elements get u = NaN, so h = NaN there: never stored, and neither counted as
    # active (g = 0) nor as above threshold (NaN >= thr is false, even for thr <= 0). This saves a
    # per-element row-validity select in the counting path.
    u = tl.load(U + offs, mask=mask, other=float("nan")).to(tl.float32)
    if ACTIVATION == 0:
        p = tl.maximum(g, 0.0) * u  # [BT, BF] fp32
    else:
        p = _silu_product(g, u, PRECISE, FIXUP_ASM)  # [BT, BF] fp32
    h = _to_dtype(p, H.dtype.element_ty, ROUND_H)  # the one rounding to the output dtype
    tl.store(H + offs, h, mask=mask)
    if COUNT:
        active = g > 0.0  # [BT, BF]
        if HAS_ROW_MASK:  # rows excluded from counting (their h is still computed and stored)
            # ANDed into each compare's predicate rather than selecting on the packed increment
            # afterwards (ReLU's compiled loop: 128 registers instead of 138).
            keep = (tl.load(ROW_MASK + rows, mask=row_ok, other=0) != 0)[:, None]  # [BT, 1]
            active = active & keep
        inc = active.to(tl.int32)
        if HAS_THRESHOLDS:
            # Counts h as stored, not the fp32 product; masked-out columns have threshold +inf.
            if THR_ON_PRODUCT:  # THR_ROW holds _bf16_count_boundary(thresholds): same answer
                big = tl.abs(p) >= THR_ROW
            else:
                big = tl.abs(h.to(tl.float32)) >= THR_ROW
            if HAS_ROW_MASK:
                big = big & keep
            inc += big.to(tl.int32) << 16
        tally += inc
    return tally


@triton.jit
def gated_act_fwd_kernel(
    G,
    U,
    H,  # [T, F] each, contiguous
    ACTIVE,
    ABOVE,
    TOKENS,
    THRESHOLDS,
    ROW_MASK,  # [F] int, [F] int, [] int, [F] fp32, [T] int32
    T,
    F,
    ACTIVATION: tl.constexpr,  # 0 = relu, 1 = silu
    COUNT: tl.constexpr,
    HAS_THRESHOLDS: tl.constexpr,
    HAS_ROW_MASK: tl.constexpr,
    PRECISE: tl.constexpr,
    FIXUP_ASM: tl.constexpr,  # SiLU on bf16: the exact fix-up's PTX ("" = exact math throughout)
    ROUND_H: tl.constexpr,
    THR_ON_PRODUCT: tl.constexpr,  # bf16 output: compare the fp32 product to a rounded boundary
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
    ROW_TILES: tl.constexpr,
    STAGES: tl.constexpr,  # software-pipelining depth of the row-tile loop
):
    # 1-D grid, column blocks fastest: neighbouring programs touch neighbouring memory, and the
    # row-chunk count is not limited by the 65535 cap of grid axes 1/2.
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(F, BLOCK_F)
    pid_f = pid % n_col_blocks
    pid_t = pid // n_col_blocks

    cols = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)  # [BF]
    col_ok = cols < F
    # Per-element tallies, reduced over rows only once after the loop: the cross-warp column
    # reduction (shared memory + barriers) is what costs, not the compares and adds.
    tally = tl.zeros([BLOCK_T, BLOCK_F], dtype=tl.int32)
    thr_row = tl.zeros([1, BLOCK_F], dtype=tl.float32)
    if HAS_THRESHOLDS:
        thr = tl.load(THRESHOLDS + cols, mask=col_ok, other=float("inf"))  # [BF]
        if THR_ON_PRODUCT:
            thr = _bf16_count_boundary(thr)
        thr_row = thr[None, :]  # [1, BF]

    row_base = pid_t * ROW_TILES * BLOCK_T
    # A pipelined loop, not an unrolled one (tl.static_range measured 1.5-5x slower on an H200).
    for i in tl.range(0, ROW_TILES, num_stages=STAGES):
        tally = _fwd_row_tile(
            G,
            U,
            H,
            ROW_MASK,
            thr_row,
            tally,
            row_base + i * BLOCK_T,
            cols,
            col_ok,
            T,
            F,
            ACTIVATION,
            COUNT,
            HAS_THRESHOLDS,
            HAS_ROW_MASK,
            PRECISE,
            FIXUP_ASM,
            ROUND_H,
            THR_ON_PRODUCT,
            BLOCK_T,
        )

    if COUNT:
        col_tally = tl.sum(tally, axis=0)  # [BF]
        n_active = col_tally & 0xFFFF
        tl.atomic_add(ACTIVE + cols, n_active.to(ACTIVE.dtype.element_ty), mask=col_ok, sem="relaxed")
        if HAS_THRESHOLDS:
            n_above = col_tally >> 16
            tl.atomic_add(ABOVE + cols, n_above.to(ABOVE.dtype.element_ty), mask=col_ok, sem="relaxed")
        # The first column block's programs also count their rows into TOKENS: one atomic per
        # program there instead of a separate (tiny, but launched) kernel per call.
        if pid_f == 0:
            if HAS_ROW_MASK:
                rows = row_base + tl.arange(0, BLOCK_T * ROW_TILES)
                n_rows = tl.sum((tl.load(ROW_MASK + rows, mask=rows < T, other=0) != 0).to(tl.int32))
            else:
                n_rows = tl.minimum(T - row_base, BLOCK_T * ROW_TILES)
            tl.atomic_add(TOKENS, n_rows.to(TOKENS.dtype.element_ty), sem="relaxed")


@triton.jit
def gated_act_bwd_kernel(
    DH,
    G,
    U,
    DG,
    DU,  # [T, F] each, contiguous
    T,
    F,
    ACTIVATION: tl.constexpr,
    PRECISE: tl.constexpr,
    ROUND_DG: tl.constexpr,
    ROUND_DU: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(F, BLOCK_F)
    pid_f = pid % n_col_blocks
    pid_t = pid // n_col_blocks
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    offs = rows.to(tl.int64)[:, None] * F + cols[None, :]
    mask = (rows < T)[:, None] & (cols < F)[None, :]
    dh = tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    ds = dh * u  # dL/dσ(g)
    if ACTIVATION == 0:
        dg = tl.where(g > 0.0, ds, 0.0)
        s = tl.maximum(g, 0.0)
    else:
        # Same operation order as PyTorch's silu / silu_backward so results match to the last bit
        # wherever the compiler does not fuse differently.
        denom = 1.0 + _exp(-g, PRECISE)
        sig = _div(1.0, denom, PRECISE)
        s = _div(g, denom, PRECISE)
        dg = ds * sig * (1.0 + g * (1.0 - sig))
    du = dh * s
    tl.store(DG + offs, _to_dtype(dg, DG.dtype.element_ty, ROUND_DG), mask=mask)
    tl.store(DU + offs, _to_dtype(du, DU.dtype.element_ty, ROUND_DU), mask=mask)


# Interpreted or compiled is fixed when the kernels are decorated (at import), not at launch.
INTERPRETED: bool = not isinstance(gated_act_fwd_kernel, triton.runtime.JITFunction)


def _precise_math(compiled: bool) -> bool:
    """libdevice's exp and the correctly rounded division exist only in compiled CUDA code."""
    return libdevice is not None and compiled


@functools.lru_cache(maxsize=None)
def _fast_silu_proven(device: torch.device) -> bool:
    if device.type != "cuda" or not _precise_math(not INTERPRETED):
        return False
    return torch.cuda.get_device_capability(device)[0] in _FAST_SILU_PROVEN_ON


def fast_silu_enabled(device: Union[torch.device, str]) -> bool:
    """Whether the bf16 SiLU forward on ``device`` uses the fast exp2/reciprocal with its exact
    fix-up: compiled Triton on a GPU generation where the fix-up was proven for all bf16 pairs."""
    return _fast_silu_proven(torch.device(device))


def _tile_config(f: int) -> Tuple[int, int, int]:
    """(BLOCK_T, BLOCK_F, num_warps) for a [T, f] problem without counting, and for the backward.

    Measured on an H200 (bf16, T = 32768, f = 1920 and 4480; a tile sweep of 2026-11-28): small
    16×128 tiles with 4 warps reach the copy bandwidth for ReLU and SiLU forward and backward;
    larger tiles lose on SiLU (more live registers). Under the interpreter the same small tiles
    make the tiny test shapes cover several row tiles per program and ragged edges.
    """
    block_f = min(128, max(16, triton.next_power_of_2(f)))
    block_t = max(16, 2048 // block_f)
    return block_t, block_f, 4


# Triton's own default for loops (what the kernel used before STAGES was a parameter).
_DEFAULT_STAGES = 3


def _count_tiles(
    activation: Activation, f: int, interpret: bool, fast_silu: bool = False
) -> Tuple[int, int, int, int, int]:
    """(BLOCK_T, BLOCK_F, num_warps, ROW_TILES, STAGES) of a counting program. BLOCK_T·ROW_TILES
    rows per program bounds the number of atomics (ceil(T / that) · f) and amortises the
    per-program column reduction, while leaving enough programs to fill the GPU.

    Measured on an H200 (bf16, T = 32768, thresholds on; dev/kernels/count_tile_sweep.py): ReLU
    moves most bytes with 32 × 128 tiles, 4 per program (sweeps of 2026-11-28). SiLU with exact
    math is issue-bound (ncu, the same day: 111 registers and 25% occupancy with 16 × 128 tiles)
    and gains from half-width 16 × 64 tiles, 16 per program. The fast SiLU keeps 16 × 64 tiles but
    prefers 8 per program and a 4-deep pipeline (CUDA-graph timing at f = 1920: 3.96 TB/s, against
    3.75 with 16 per program and 3 stages; benchmarks/RESULTS.md §2b).
    """
    block_t, block_f, num_warps = _tile_config(f)
    if interpret:
        return block_t, block_f, num_warps, 2, _DEFAULT_STAGES
    if activation == "relu":
        return 32, block_f, num_warps, 4, _DEFAULT_STAGES
    if fast_silu:
        return 16, min(block_f, 64), num_warps, 8, 4
    return 16, min(block_f, 64), num_warps, 16, _DEFAULT_STAGES


def _is_power_of_two(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0 and x & (x - 1) == 0


@dataclass(frozen=True)
class ForwardConfig:
    """How the forward kernel is launched: its tiles and code choices. :func:`forward_config`
    gives the one :func:`gated_activation_triton` uses; benchmarks and tests derive others with
    ``dataclasses.replace``. h and the counts never depend on it (integer atomics, and both
    threshold compares and both SiLU paths are exact); only the speed does."""

    block_t: int  # rows per tile (a power of two)
    block_f: int  # columns per program (a power of two)
    num_warps: int  # a power of two
    row_tiles: int = 1  # row tiles per program, which covers block_t · row_tiles rows
    stages: int = _DEFAULT_STAGES  # software-pipelining depth of the row-tile loop
    # bf16 output only: the threshold counter compares the fp32 product with a per-column boundary
    # (_bf16_count_boundary) instead of the unpacked stored h; the same answer, fewer instructions.
    thr_on_product: bool = False
    # bf16 SiLU forward, compiled: fast exp2/reciprocal with the exact per-lane fix-up, which
    # recomputes p when it lies within fix_ulps fp32 steps of a bf16 rounding midpoint or g < -fix_min_g.
    fast_silu: bool = False
    fix_ulps: int = FAST_SILU_FIX_ULPS
    fix_min_g: float = FAST_SILU_FIX_MIN_G

    def __post_init__(self) -> None:
        for name in ("block_t", "block_f", "num_warps"):
            if not _is_power_of_two(getattr(self, name)):
                raise ValueError(f"ForwardConfig.{name} must be a power of two, got {getattr(self, name)!r}")
        for name in ("row_tiles", "stages"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"ForwardConfig.{name} must be an int >= 1, got {value!r}")
        rows = self.block_t * self.row_tiles
        if rows >= 1 << _ABOVE_SHIFT:
            raise ValueError(f"a counting program covers {rows} rows, more than its packed tallies hold")
        if not (isinstance(self.fix_ulps, int) and 0 < self.fix_ulps < 0x4000):
            raise ValueError(f"ForwardConfig.fix_ulps must be in 1..16383, got {self.fix_ulps!r}")
        if math.isnan(self.fix_min_g):  # g < NaN is never true: the cut-off would be gone
            raise ValueError("ForwardConfig.fix_min_g must be a number, got NaN")


@functools.lru_cache(maxsize=None)
def _dispatch_config(
    f: int, activation: Activation, count: bool, dtype: Optional[torch.dtype], device: Optional[torch.device]
) -> ForwardConfig:
    bf16 = dtype == torch.bfloat16
    fast_silu = activation == "silu" and bf16 and device is not None and _fast_silu_proven(device)
    if count:
        block_t, block_f, num_warps, row_tiles, stages = _count_tiles(activation, f, INTERPRETED, fast_silu)
    else:
        (block_t, block_f, num_warps), row_tiles, stages = _tile_config(f), 1, _DEFAULT_STAGES
    return ForwardConfig(
        block_t=block_t,
        block_f=block_f,
        num_warps=num_warps,
        row_tiles=row_tiles,
        stages=stages,
        thr_on_product=bf16,
        fast_silu=fast_silu,
    )


def forward_config(
    f: int,
    activation: Activation,
    count: bool,
    dtype: Optional[torch.dtype],
    device: Union[torch.device, str, None] = None,
) -> ForwardConfig:
    """The launch :func:`gated_activation_triton` chooses for a [T, f] forward, counting or not,
    with g, u and h of ``dtype`` (None when g and u differ: then exact math, no bf16 compare) on
    ``device`` (None: as if not on a GPU where the fast SiLU is enabled)."""
    if activation not in _ACTIVATION_CODES:
        raise ValueError(f"unknown activation {activation!r} (expected 'relu' or 'silu')")
    return _dispatch_config(f, activation, bool(count), dtype, None if device is None else torch.device(device))


def forward_kernel_constants(
    activation: Activation,
    config: ForwardConfig,
    g_dtype: torch.dtype,
    u_dtype: torch.dtype,
    *,
    count: bool,
    thresholds: bool,
    row_mask: bool,
    compiled: bool = not INTERPRETED,
) -> Dict[str, object]:
    """The compile-time (``tl.constexpr``) arguments of ``gated_act_fwd_kernel`` for one launch:
    g of ``g_dtype`` and u of ``u_dtype`` (h has g's dtype), counting or not, with or without
    thresholds and a row mask, compiled or under the interpreter. :func:`gated_activation_forward`
    launches with exactly these; tools that compile the kernel themselves pass them too.
    Raises ValueError when ``config`` does not suit the dtypes or the interpreter."""
    if not isinstance(config, ForwardConfig):
        raise TypeError(f"config must be a ForwardConfig, got {type(config).__name__}")
    bf16 = g_dtype == torch.bfloat16 and u_dtype == torch.bfloat16
    if config.thr_on_product and not bf16:
        raise ValueError("thr_on_product needs a bf16 output (its boundary is bf16's rounding)")
    precise = _precise_math(compiled)
    if config.fast_silu and not (bf16 and precise):
        raise ValueError(
            "fast_silu needs bf16 tensors and compiled Triton on a GPU (its exact fix-up "
            "is PTX and watches bf16 rounding midpoints)"
        )
    has_thr = bool(count and thresholds)
    fast = config.fast_silu and activation == "silu"
    return dict(
        ACTIVATION=_ACTIVATION_CODES[activation],
        COUNT=bool(count),
        HAS_THRESHOLDS=has_thr,
        HAS_ROW_MASK=bool(count and row_mask),
        PRECISE=precise,
        FIXUP_ASM=_silu_fixup_ptx(config.fix_ulps, config.fix_min_g) if fast else "",
        ROUND_H=not compiled and g_dtype == torch.bfloat16,
        THR_ON_PRODUCT=config.thr_on_product and has_thr,
        BLOCK_T=config.block_t,
        BLOCK_F=config.block_f,
        ROW_TILES=config.row_tiles,
        STAGES=config.stages,
    )


def _check_counts(counts: CountTarget, f: int, t: int, device: torch.device) -> None:
    def check_vector(name: str, x: torch.Tensor, dtypes) -> None:
        if x.dtype not in dtypes or x.shape != (f,) or not x.is_contiguous() or x.device != device:
            raise ValueError(
                f"CountTarget.{name} must be a contiguous {'/'.join(map(str, dtypes))} tensor of "
                f"shape [{f}] on {device}; got {x.dtype} {tuple(x.shape)} on {x.device}"
            )

    ints = (torch.int64, torch.int32)
    check_vector("active", counts.active, ints)
    tok = counts.tokens
    if tok.dtype not in ints or tok.dim() != 0 or tok.device != device:
        raise ValueError(
            f"CountTarget.tokens must be a 0-d int64/int32 tensor on {device}; got "
            f"{tok.dtype} {tuple(tok.shape)} on {tok.device}"
        )
    if counts.above_threshold is not None:
        if counts.thresholds is None:
            raise ValueError("CountTarget.above_threshold needs CountTarget.thresholds")
        check_vector("above_threshold", counts.above_threshold, ints)
        check_vector("thresholds", counts.thresholds, (torch.float32,))
    if counts.row_mask is not None:
        rm = counts.row_mask
        if rm.dtype != torch.bool or rm.numel() != t or rm.device != device:
            raise ValueError(
                f"CountTarget.row_mask must be a bool tensor with {t} elements (one per token) on "
                f"{device}; got {rm.dtype} {tuple(rm.shape)} on {rm.device}"
            )


def _forward(
    g2: torch.Tensor,
    u2: torch.Tensor,
    activation: Activation,
    counts: Optional[CountTarget],
    config: Optional[ForwardConfig],
) -> torch.Tensor:
    """Launches the forward kernel on contiguous [T, f] views (already checked by the caller)."""
    t, f = g2.shape
    h2 = torch.empty((t, f), dtype=g2.dtype, device=g2.device)  # [T, f]
    count = counts is not None
    if count:
        _check_counts(counts, f, t, g2.device)
    has_thr = count and counts.above_threshold is not None
    has_mask = count and counts.row_mask is not None
    if config is None:
        if t == 0 or f == 0:
            return h2
        # Mixed input dtypes take the exact path: the fast SiLU's proof covers bf16 pairs only.
        dtype = g2.dtype if u2.dtype == g2.dtype else None
        config = _dispatch_config(f, activation, count, dtype, g2.device)
    constants = forward_kernel_constants(
        activation, config, g2.dtype, u2.dtype, count=count, thresholds=has_thr, row_mask=has_mask
    )
    if t == 0 or f == 0:
        return h2
    grid = (triton.cdiv(f, config.block_f) * triton.cdiv(t, config.block_t * config.row_tiles),)
    active = counts.active if count else h2  # dummies are never read: their branches are compiled out
    above = counts.above_threshold if has_thr else active
    tokens = counts.tokens if count else active
    thresholds = counts.thresholds if has_thr else h2
    # int32, not the bool's bytes: Triton's pipeliner turns 4-byte loads into asynchronous copies
    # issued tiles ahead, while a 1-byte load stalls every row tile for a full memory round trip
    # (measured: ReLU 78-91% of copy bandwidth with it).
    row_mask = counts.row_mask.reshape(-1).to(torch.int32) if has_mask else h2  # [T]
    gated_act_fwd_kernel[grid](
        g2,
        u2,
        h2,
        active,
        above,
        tokens,
        thresholds,
        row_mask,
        t,
        f,
        **constants,
        num_warps=config.num_warps,
    )
    return h2


def _backward(
    dh2: torch.Tensor, g2: torch.Tensor, u2: torch.Tensor, activation: Activation
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launches the backward kernel on contiguous [T, f] views (already checked by the caller)."""
    t, f = g2.shape
    dg2 = torch.empty_like(g2)  # [T, f]
    du2 = torch.empty_like(u2)  # [T, f]
    if t == 0 or f == 0:
        return dg2, du2
    block_t, block_f, num_warps = _tile_config(f)
    grid = (triton.cdiv(f, block_f) * triton.cdiv(t, block_t),)
    compiled = not INTERPRETED
    gated_act_bwd_kernel[grid](
        dh2,
        g2,
        u2,
        dg2,
        du2,
        t,
        f,
        ACTIVATION=_ACTIVATION_CODES[activation],
        PRECISE=_precise_math(compiled),
        ROUND_DG=not compiled and dg2.dtype == torch.bfloat16,
        ROUND_DU=not compiled and du2.dtype == torch.bfloat16,
        BLOCK_T=block_t,
        BLOCK_F=block_f,
        num_warps=num_warps,
    )
    return dg2, du2


def _check_views(activation: Activation, **views: torch.Tensor) -> None:
    """The public launchers' arguments: a known activation and contiguous [T, f] tensors of one
    shape on one device."""
    if activation not in _ACTIVATION_CODES:
        raise ValueError(f"unknown activation {activation!r} (expected 'relu' or 'silu')")
    (first_name, first), *others = views.items()
    for name, x in views.items():
        if x.dim() != 2 or not x.is_contiguous():
            raise ValueError(
                f"{name} must be a contiguous [T, f] tensor; got shape {tuple(x.shape)}"
                f"{'' if x.is_contiguous() else ', not contiguous'}"
            )
    for name, x in others:
        if x.shape != first.shape or x.device != first.device:
            raise ValueError(
                f"{name} ({tuple(x.shape)} on {x.device}) must match {first_name} "
                f"({tuple(first.shape)} on {first.device})"
            )


def gated_activation_forward(
    g2: torch.Tensor,
    u2: torch.Tensor,
    activation: Activation,
    counts: Optional[CountTarget] = None,
    config: Optional[ForwardConfig] = None,
) -> torch.Tensor:
    """One forward launch on contiguous [T, f] tensors: returns h2 [T, f] (g2's dtype) and adds
    the counts into ``counts`` when given. ``config`` None = the dispatch's own choice
    (:func:`forward_config`). Not differentiable: for benchmarks and tests (the model calls
    :func:`gated_activation_triton`)."""
    _check_views(activation, g2=g2, u2=u2)
    return _forward(g2, u2, activation, counts, config)


def gated_activation_backward(
    dh2: torch.Tensor, g2: torch.Tensor, u2: torch.Tensor, activation: Activation
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One backward launch on contiguous [T, f] tensors: returns (dg2, du2) in g2's and u2's
    dtypes, σ recomputed from g2. For benchmarks and tests (autograd runs the same launch under
    :func:`gated_activation_triton`)."""
    _check_views(activation, dh2=dh2, g2=g2, u2=u2)
    return _backward(dh2, g2, u2, activation)


class _GatedActivationFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, g: torch.Tensor, u: torch.Tensor, activation: Activation, counts: Optional[CountTarget]
    ) -> torch.Tensor:
        shape = g.shape
        f = shape[-1] if len(shape) else 1
        g2 = g.contiguous().view(-1, f)  # [T, f]
        u2 = u.contiguous().view(-1, f)  # [T, f]
        h2 = _forward(g2, u2, activation, counts, None)
        ctx.save_for_backward(g2, u2)  # pre-activations only; σ is recomputed in backward
        ctx.activation = activation
        ctx.shape = shape
        return h2.view(shape)

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        g2, u2 = ctx.saved_tensors
        dh2 = dh.contiguous().view(g2.shape)
        dg2, du2 = _backward(dh2, g2, u2, ctx.activation)
        return dg2.view(ctx.shape), du2.view(ctx.shape), None, None


def gated_activation_triton(
    g: torch.Tensor, u: torch.Tensor, activation: Activation, counts: Optional[CountTarget] = None
) -> torch.Tensor:
    """``σ(g) ⊙ u`` for g, u of shape [..., f] with the fused Triton kernels (differentiable).

    Counts into ``counts`` when given (see the module docstring). Non-contiguous inputs are made
    contiguous. Under ``TRITON_INTERPRET=1`` (set before this module is imported) it runs on CPU
    tensors.
    """
    if activation not in _ACTIVATION_CODES:
        raise ValueError(f"unknown activation {activation!r} (expected 'relu' or 'silu')")
    if g.shape != u.shape:
        raise ValueError(f"gate and up shapes differ: {tuple(g.shape)} vs {tuple(u.shape)}")
    if g.device != u.device:
        raise ValueError(f"gate and up are on different devices: {g.device} vs {u.device}")
    return _GatedActivationFunction.apply(g, u, activation, counts)

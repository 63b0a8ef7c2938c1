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
* The atomics go straight into the int64 target (no int32 partial buffer and second launch):
  after the in-program reduction there are only ``ceil(T / (BLOCK_T·ROW_TILES)) · f`` of them, so
  the lower throughput of 64-bit atomics does not matter and we save a launch and a buffer.
  int32 targets are accepted too. Integer atomics are associative, so counts are exact and
  independent of the launch configuration and of scheduling.

SiLU matches PyTorch's formula ``g / (1 + exp(-g))``. On the GPU it uses libdevice ``expf`` and a
correctly rounded division, as PyTorch's CUDA kernel does, so that h (and hence the threshold
counts) agree with the reference bit for bit; under ``TRITON_INTERPRET=1`` (numpy) ``tl.exp`` is
used instead because the interpreter has no libdevice.
"""

from __future__ import annotations

from typing import Optional, Tuple

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
def _fwd_row_tile(G, U, H, ROW_MASK, THR_ROW, tally, row0, cols, col_ok, T, F,
                  ACTIVATION: tl.constexpr, COUNT: tl.constexpr, HAS_THRESHOLDS: tl.constexpr,
                  HAS_ROW_MASK: tl.constexpr, PRECISE: tl.constexpr, ROUND_H: tl.constexpr,
                  BLOCK_T: tl.constexpr):
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
        s = tl.maximum(g, 0.0)
    else:
        s = _div(g, 1.0 + _exp(-g, PRECISE), PRECISE)
    h = _to_dtype(s * u, H.dtype.element_ty, ROUND_H)  # the one rounding to the output dtype
    tl.store(H + offs, h, mask=mask)
    if COUNT:
        # Masked-out columns also load threshold +inf (never above).
        inc = (g > 0.0).to(tl.int32)
        if HAS_THRESHOLDS:
            big = tl.abs(h.to(tl.float32)) >= THR_ROW  # h as stored, not the fp32 product
            inc += big.to(tl.int32) << 16
        if HAS_ROW_MASK:  # rows excluded from counting (their h is still computed and stored)
            keep = tl.load(ROW_MASK + rows, mask=row_ok, other=0) != 0  # [BT]
            inc = tl.where(keep[:, None], inc, 0)
        tally += inc
    return tally


@triton.jit
def _gated_act_fwd_kernel(
    G, U, H,  # [T, F] each, contiguous
    ACTIVE, ABOVE, THRESHOLDS, ROW_MASK,  # [F] int, [F] int, [F] fp32, [T] uint8 (or dummies)
    T, F,
    ACTIVATION: tl.constexpr,  # 0 = relu, 1 = silu
    COUNT: tl.constexpr,
    HAS_THRESHOLDS: tl.constexpr,
    HAS_ROW_MASK: tl.constexpr,
    PRECISE: tl.constexpr,
    ROUND_H: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_F: tl.constexpr,
    ROW_TILES: tl.constexpr,
    UNROLL: tl.constexpr,
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
        thr_row = tl.load(THRESHOLDS + cols, mask=col_ok, other=float("inf"))[None, :]  # [1, BF]

    row_base = pid_t * ROW_TILES * BLOCK_T
    if UNROLL:
        for i in tl.static_range(ROW_TILES):
            tally = _fwd_row_tile(G, U, H, ROW_MASK, thr_row, tally, row_base + i * BLOCK_T, cols,
                                  col_ok, T, F, ACTIVATION, COUNT, HAS_THRESHOLDS, HAS_ROW_MASK,
                                  PRECISE, ROUND_H, BLOCK_T)
    else:
        for i in tl.range(0, ROW_TILES, num_stages=STAGES):
            tally = _fwd_row_tile(G, U, H, ROW_MASK, thr_row, tally, row_base + i * BLOCK_T, cols,
                                  col_ok, T, F, ACTIVATION, COUNT, HAS_THRESHOLDS, HAS_ROW_MASK,
                                  PRECISE, ROUND_H, BLOCK_T)

    if COUNT:
        col_tally = tl.sum(tally, axis=0)  # [BF]
        n_active = col_tally & 0xFFFF
        tl.atomic_add(ACTIVE + cols, n_active.to(ACTIVE.dtype.element_ty), mask=col_ok, sem="relaxed")
        if HAS_THRESHOLDS:
            n_above = col_tally >> 16
            tl.atomic_add(ABOVE + cols, n_above.to(ABOVE.dtype.element_ty), mask=col_ok, sem="relaxed")


@triton.jit
def _gated_act_bwd_kernel(
    DH, G, U, DG, DU,  # [T, F] each, contiguous
    T, F,
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
_INTERPRETED = not isinstance(_gated_act_fwd_kernel, triton.runtime.JITFunction)


def _precise_math() -> bool:
    return libdevice is not None and not _INTERPRETED


def _round_bf16_by_hand(t: torch.Tensor) -> bool:
    return _INTERPRETED and t.dtype == torch.bfloat16


def _tile_config(f: int, interpret: bool) -> Tuple[int, int, int]:
    """(BLOCK_T, BLOCK_F, num_warps) for a [T, f] problem.

    Measured on an H200 (bf16, T = 32768, f = 1920 and 4480; benchmarks/gated_activation_bench.py
    --sweep): small 16×128 tiles with 4 warps reach the copy bandwidth for ReLU and SiLU forward
    and backward; larger tiles lose on SiLU (more live registers). Under the interpreter the same
    small tiles make the tiny test shapes cover several row tiles per program and ragged edges.
    """
    block_f = min(128, max(16, triton.next_power_of_2(f)))
    block_t = max(16, 2048 // block_f)
    return block_t, block_f, 4


# Triton's own default for loops (what the kernel used before STAGES was a parameter).
_DEFAULT_STAGES = 3


def _count_rows(activation: Activation, block_t: int, interpret: bool) -> Tuple[int, int]:
    """(BLOCK_T, ROW_TILES) of a counting program. BLOCK_T·ROW_TILES rows per program bounds the
    number of atomics (ceil(T / that) · f) and amortises the per-program column reduction, while
    leaving enough programs to fill the GPU.

    Measured on an H200 (benchmarks/count_tile_sweep.py, bf16, T = 32768, thresholds on): ReLU
    moves most bytes with 32-row tiles, 4 per program (87% / 95% of copy bandwidth at f = 1920 /
    4480, against 82% / 92% with 16 × 16); SiLU, whose exact exp and division make it
    compute-heavier, is best with 16-row tiles, 16 per program (76% / 84%) and loses with more.
    """
    if interpret:
        return block_t, 2
    return (32, 4) if activation == "relu" else (block_t, 16)


def _check_counts(counts: CountTarget, f: int, t: int, device: torch.device) -> None:
    def check_vector(name: str, x: torch.Tensor, dtypes) -> None:
        if x.dtype not in dtypes or x.shape != (f,) or not x.is_contiguous() or x.device != device:
            raise ValueError(
                f"CountTarget.{name} must be a contiguous {'/'.join(map(str, dtypes))} tensor of "
                f"shape [{f}] on {device}; got {x.dtype} {tuple(x.shape)} on {x.device}"
            )

    ints = (torch.int64, torch.int32)
    check_vector("active", counts.active, ints)
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


def _forward(g2: torch.Tensor, u2: torch.Tensor, activation: Activation,
             counts: Optional[CountTarget],
             config: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
    """Launches the forward kernel on [T, f] views. ``config`` = (BLOCK_T, BLOCK_F, num_warps,
    ROW_TILES, UNROLL[, STAGES]) overrides the defaults (used by the benchmark's tile sweeps)."""
    t, f = g2.shape
    h2 = torch.empty((t, f), dtype=g2.dtype, device=g2.device)
    count = counts is not None
    if count:
        _check_counts(counts, f, t, g2.device)
    if t == 0 or f == 0:
        return h2

    interpret = _INTERPRETED
    if config is None:
        block_t, block_f, num_warps = _tile_config(f, interpret)
        row_tiles = 1
        if count:
            block_t, row_tiles = _count_rows(activation, block_t, interpret)
        unroll, stages = False, _DEFAULT_STAGES
    else:
        block_t, block_f, num_warps, row_tiles, unroll = config[:5]
        stages = config[5] if len(config) > 5 else _DEFAULT_STAGES
    if block_t * row_tiles >= 1 << _ABOVE_SHIFT:
        raise ValueError("a program must cover fewer than 65536 rows (packed 16-bit tallies)")
    rows_per_program = block_t * row_tiles
    grid = (triton.cdiv(f, block_f) * triton.cdiv(t, rows_per_program),)

    has_thr = count and counts.above_threshold is not None
    has_mask = count and counts.row_mask is not None
    active = counts.active if count else h2  # dummies are never read: their branches are compiled out
    above = counts.above_threshold if has_thr else active
    thresholds = counts.thresholds if has_thr else h2
    row_mask = counts.row_mask.reshape(-1).view(torch.uint8) if has_mask else h2
    _gated_act_fwd_kernel[grid](
        g2, u2, h2, active, above, thresholds, row_mask, t, f,
        ACTIVATION=_ACTIVATION_CODES[activation], COUNT=count, HAS_THRESHOLDS=has_thr,
        HAS_ROW_MASK=has_mask, PRECISE=_precise_math(), ROUND_H=_round_bf16_by_hand(h2),
        BLOCK_T=block_t, BLOCK_F=block_f, ROW_TILES=row_tiles, UNROLL=unroll, STAGES=stages,
        num_warps=num_warps,
    )
    if count:
        # Device-side add: no host synchronisation.
        counts.tokens += counts.row_mask.sum() if has_mask else t
    return h2


def _backward(dh2: torch.Tensor, g2: torch.Tensor, u2: torch.Tensor, activation: Activation,
              config: Optional[Tuple[int, int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launches the backward kernel on [T, f] views; ``config`` = (BLOCK_T, BLOCK_F, num_warps)."""
    t, f = g2.shape
    dg2 = torch.empty_like(g2)
    du2 = torch.empty_like(u2)
    if t == 0 or f == 0:
        return dg2, du2
    block_t, block_f, num_warps = config or _tile_config(f, _INTERPRETED)
    grid = (triton.cdiv(f, block_f) * triton.cdiv(t, block_t),)
    _gated_act_bwd_kernel[grid](
        dh2, g2, u2, dg2, du2, t, f,
        ACTIVATION=_ACTIVATION_CODES[activation], PRECISE=_precise_math(),
        ROUND_DG=_round_bf16_by_hand(dg2), ROUND_DU=_round_bf16_by_hand(du2),
        BLOCK_T=block_t, BLOCK_F=block_f, num_warps=num_warps,
    )
    return dg2, du2


class _GatedActivationFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor, activation: Activation,
                counts: Optional[CountTarget]) -> torch.Tensor:
        shape = g.shape
        f = shape[-1] if len(shape) else 1
        g2 = g.contiguous().view(-1, f)  # [T, f]
        u2 = u.contiguous().view(-1, f)  # [T, f]
        h2 = _forward(g2, u2, activation, counts)
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

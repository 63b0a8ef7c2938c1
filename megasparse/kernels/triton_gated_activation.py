"""The fused Triton gated-activation kernels as PyTorch sees them: launch configuration, input
checks and the autograd function (the kernels themselves, and how their counters and their
bit-exact SiLU work, are in triton_gated_activation_kernels.py).

Public entry points: :func:`gated_activation_triton` (what the model calls, differentiable);
:func:`gated_activation_forward` / :func:`gated_activation_backward` (one launch on [T, f] views,
for benchmarks and tests); :func:`forward_config` (the launch the dispatch chooses) and
:class:`ForwardConfig` (to launch another one); :func:`forward_kernel_constants` with
``gated_act_fwd_kernel`` (for tools that compile the kernel themselves).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
import triton

from megasparse.kernels.gated_activation import Activation, CountTarget
from megasparse.kernels.triton_gated_activation_kernels import (
    ABOVE_SHIFT,
    ACTIVATION_CODES,
    FAST_SILU_FIX_MIN_G,
    FAST_SILU_FIX_ULPS,
    FAST_SILU_PRODUCT_PTX,
    FAST_SILU_PROVEN_ON,
    gated_act_bwd_kernel,
    gated_act_fwd_kernel,
    libdevice,
    silu_fixup_ptx,
)

__all__ = [
    "FAST_SILU_FIX_MIN_G",
    "FAST_SILU_FIX_ULPS",
    "FAST_SILU_PRODUCT_PTX",
    "ForwardConfig",
    "INTERPRETED",
    "fast_silu_enabled",
    "forward_config",
    "forward_kernel_constants",
    "gated_act_bwd_kernel",
    "gated_act_fwd_kernel",
    "gated_activation_backward",
    "gated_activation_forward",
    "gated_activation_triton",
]


# Interpreted or compiled is fixed when the kernels are decorated (at import), not at launch.
INTERPRETED: bool = not isinstance(gated_act_fwd_kernel, triton.runtime.JITFunction)


def _precise_math(compiled: bool) -> bool:
    """libdevice's exp and the correctly rounded division exist only in compiled CUDA code."""
    return libdevice is not None and compiled


@functools.lru_cache(maxsize=None)
def _fast_silu_proven(device: torch.device) -> bool:
    if device.type != "cuda" or not _precise_math(not INTERPRETED):
        return False
    return torch.cuda.get_device_capability(device)[0] in FAST_SILU_PROVEN_ON


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
        if rows >= 1 << ABOVE_SHIFT:
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
    if activation not in ACTIVATION_CODES:
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
        ACTIVATION=ACTIVATION_CODES[activation],
        COUNT=bool(count),
        HAS_THRESHOLDS=has_thr,
        HAS_ROW_MASK=bool(count and row_mask),
        PRECISE=precise,
        FIXUP_ASM=silu_fixup_ptx(config.fix_ulps, config.fix_min_g) if fast else "",
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
    """Launches the forward kernel on [T, f] views (already checked by the caller): contiguous, or
    the two halves of one contiguous [T, 2f] tensor (same row stride, unit column stride)."""
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
        g2.stride(0),
        **constants,
        num_warps=config.num_warps,
    )
    return h2


def _backward(
    dh2: torch.Tensor,
    g2: torch.Tensor,
    u2: torch.Tensor,
    activation: Activation,
    out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launches the backward kernel on [T, f] views (already checked by the caller); dh2 is
    contiguous, g2 and u2 as in ``_forward``. ``out``: (dg2, du2) to write, with g2's row stride
    (the halves of one [T, 2f] gradient); default new contiguous tensors."""
    t, f = g2.shape
    if out is None:
        dg2 = torch.empty((t, f), dtype=g2.dtype, device=g2.device)  # [T, f]
        du2 = torch.empty((t, f), dtype=u2.dtype, device=u2.device)  # [T, f]
    else:
        dg2, du2 = out
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
        g2.stride(0),
        ACTIVATION=ACTIVATION_CODES[activation],
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
    if activation not in ACTIVATION_CODES:
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
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"unknown activation {activation!r} (expected 'relu' or 'silu')")
    if g.shape != u.shape:
        raise ValueError(f"gate and up shapes differ: {tuple(g.shape)} vs {tuple(u.shape)}")
    if g.device != u.device:
        raise ValueError(f"gate and up are on different devices: {g.device} vs {u.device}")
    return _GatedActivationFunction.apply(g, u, activation, counts)

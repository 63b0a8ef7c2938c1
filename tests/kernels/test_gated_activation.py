"""The fused Triton gated activation against the PyTorch reference: outputs, counts, gradients.

Without a GPU the kernels run under Triton's CPU interpreter (see conftest.py) at small shapes;
tests marked ``gpu`` run larger shapes compiled on CUDA.

Exactness. Counts must equal the reference exactly. ReLU outputs and gradients are one IEEE
multiply each, so they must be bitwise equal to the reference everywhere. SiLU uses the same
formula as PyTorch (``g / (1 + exp(-g))``) but the exponential comes from another library (numpy
under the interpreter, libdevice on the GPU), so fp32 results may differ in the last bits; we
compare them with a few-ulp tolerance, and check the threshold counts exactly against the
reference counting rule applied to the kernel's own stored h (the contract: "h as stored").
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Optional

import pytest
import torch

triton = pytest.importorskip("triton")

from megasparse.kernels.gated_activation import (  # noqa: E402
    CountTarget,
    count_activations_reference,
    gated_activation,
    gated_activation_reference,
)
from megasparse.kernels.triton_gated_activation import (  # noqa: E402
    INTERPRETED,
    fast_silu_enabled,
    forward_config,
    gated_activation_backward,
    gated_activation_forward,
    gated_activation_triton,
)

DEVICE = "cpu" if INTERPRETED else "cuda"
# Without a GPU these tests must run in the interpreter; failing loudly beats a silent skip that
# would leave CI testing no kernel at all.
if not torch.cuda.is_available() and (
    not INTERPRETED or isinstance(triton.language.standard.sum, triton.runtime.JITFunction)
):
    raise RuntimeError(
        "kernel tests without a GPU need TRITON_INTERPRET=1 set before triton is first "
        "imported (tests/conftest.py sets it); run with TRITON_INTERPRET=1 in the environment"
    )

gpu = pytest.mark.gpu
needs_compiled_gpu = pytest.mark.skipif(
    INTERPRETED or not torch.cuda.is_available(), reason="needs CUDA and compiled Triton"
)

# Relative tolerance for fp32 SiLU: a few ulps of exp, carried through one division and product.
SILU_FP32_RTOL = 4e-6


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode()) % 10_000  # stable across processes, unlike hash()


def _inputs(shape, dtype, seed: int, device: str = DEVICE):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(shape, generator=gen).to(dtype)
    u = torch.randn(shape, generator=gen).to(dtype)
    return g.to(device), u.to(device)


def _count_target(
    f: int,
    t: int,
    thresholds: Optional[torch.Tensor],
    row_mask: Optional[torch.Tensor],
    device: str = DEVICE,
    dtype=torch.int64,
) -> CountTarget:
    return CountTarget(
        active=torch.zeros(f, dtype=dtype, device=device),
        tokens=torch.zeros((), dtype=torch.int64, device=device),
        above_threshold=None if thresholds is None else torch.zeros(f, dtype=dtype, device=device),
        thresholds=thresholds,
        row_mask=row_mask,
    )


def _thresholds_with_ties(h_ref: torch.Tensor, seed: int) -> torch.Tensor:
    """Half the columns get |h| of one real row as threshold (tests the ≥ tie), half random."""
    f = h_ref.shape[-1]
    gen = torch.Generator().manual_seed(seed + 1)
    thr = torch.rand(f, generator=gen).to(h_ref.device) * 0.8
    tie_row = h_ref.reshape(-1, f)[0].float().abs()
    thr[::2] = tie_row[::2]
    return thr.contiguous()


def _assert_outputs_match(out: torch.Tensor, ref: torch.Tensor, activation: str) -> None:
    if activation == "relu" or out.dtype != torch.float32:
        # ReLU: exact everywhere. bf16/fp16 SiLU: the few-ulp fp32 difference almost never crosses a
        # half-precision rounding boundary; allow one step there just in case.
        if activation == "relu":
            assert torch.equal(out, ref)
        else:
            torch.testing.assert_close(out, ref, rtol=2**-7, atol=1e-6)
    else:
        torch.testing.assert_close(out, ref, rtol=SILU_FP32_RTOL, atol=1e-7)


SHAPES = [(37, 129), (64, 300), (2, 3, 17), (1, 1)]
COUNT_MODES = ["off", "active+mask", "thresholds", "thresholds+mask"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("mode", COUNT_MODES)
def test_forward_and_counts_match_reference(shape, dtype, activation, mode):
    seed = _seed(shape, dtype, activation, mode)
    g, u = _inputs(shape, dtype, seed)
    f = shape[-1]
    t = g.numel() // f
    h_plain = gated_activation_reference(g, u, activation)
    thresholds = _thresholds_with_ties(h_plain, seed) if "thresholds" in mode else None
    row_mask = None
    if "mask" in mode:
        gen = torch.Generator().manual_seed(seed + 2)
        row_mask = (torch.rand(shape[:-1], generator=gen) > 0.3).to(g.device)
    counts = None if mode == "off" else _count_target(f, t, thresholds, row_mask)
    counts_ref = None if mode == "off" else _count_target(f, t, thresholds, row_mask)

    h = gated_activation_triton(g, u, activation, counts)
    h_ref = gated_activation_reference(g, u, activation, counts_ref)

    assert h.shape == g.shape and h.dtype == g.dtype
    _assert_outputs_match(h, h_ref, activation)
    if counts is None:
        return
    assert torch.equal(counts.active, counts_ref.active)
    assert counts.tokens.item() == counts_ref.tokens.item()
    assert counts.tokens.item() == (t if row_mask is None else int(row_mask.sum()))
    if thresholds is not None:
        # The contract counts the kernel's own stored h; that must match exactly always ...
        own = _count_target(f, t, thresholds, row_mask)
        count_activations_reference(g, h, own)
        assert torch.equal(counts.above_threshold, own.above_threshold)
        # ... and equals the full reference whenever h is bitwise the reference's.
        if torch.equal(h, h_ref):
            assert torch.equal(counts.above_threshold, counts_ref.above_threshold)
        if t * f > 100:  # the test data really exercises the counter (not so for 1x1, masked)
            assert counts.above_threshold.sum() > 0 and counts.active.sum() > 0


@pytest.mark.parametrize("shape", [(37, 129), (3, 5, 40)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_gradients_match_autograd_of_reference(shape, dtype, activation):
    seed = _seed(shape, dtype, activation)
    g, u = _inputs(shape, dtype, seed)
    dh = _inputs(shape, dtype, seed + 7)[0]

    g1, u1 = g.clone().requires_grad_(), u.clone().requires_grad_()
    counts = _count_target(shape[-1], g.numel() // shape[-1], None, None)
    h = gated_activation_triton(g1, u1, activation, counts)  # counting must not touch gradients
    dg, du = torch.autograd.grad(h, (g1, u1), dh)

    g2, u2 = g.clone().requires_grad_(), u.clone().requires_grad_()
    dg_ref, du_ref = torch.autograd.grad(gated_activation_reference(g2, u2, activation), (g2, u2), dh)

    assert dg.dtype == g.dtype and du.dtype == u.dtype and dg.shape == g.shape
    _assert_outputs_match(dg, dg_ref, activation)
    _assert_outputs_match(du, du_ref, activation)
    assert counts.active.sum() > 0  # counting ran in forward ...
    before = counts.active.clone()
    h2 = gated_activation_triton(g1, u1, activation, counts)
    torch.autograd.grad(h2, (g1, u1), dh)
    assert torch.equal(counts.active, 2 * before)  # ... and never in backward


def test_counts_accumulate_over_calls_and_int32_targets_work():
    g, u = _inputs((45, 70), torch.bfloat16, seed=3)
    thr = torch.full((70,), 0.25, device=g.device)
    mask = torch.arange(45, device=g.device) % 4 != 0
    c64 = _count_target(70, 45, thr, mask)
    c32 = _count_target(70, 45, thr, mask, dtype=torch.int32)
    ref = _count_target(70, 45, thr, mask)
    for _ in range(3):
        gated_activation_triton(g, u, "silu", c64)
        gated_activation_triton(g, u, "silu", c32)
        gated_activation_reference(g, u, "silu", ref)
    assert torch.equal(c64.active, ref.active) and torch.equal(c64.above_threshold, ref.above_threshold)
    assert torch.equal(c32.active.long(), ref.active) and c32.active.dtype == torch.int32
    assert torch.equal(c32.above_threshold.long(), ref.above_threshold)
    assert c64.tokens.item() == 3 * int(mask.sum())


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_zero_thresholds_count_every_counted_element_and_nothing_past_the_edges(activation):
    # |h| >= 0 holds for every real element: each column's count must be exactly the counted rows;
    # the ragged tail rows/columns of the last tiles must not leak in.
    t, f = 37, 129
    g, u = _inputs((t, f), torch.bfloat16, seed=21)
    for row_mask in (None, (torch.arange(t) % 3 != 0).to(g.device)):
        counts = _count_target(f, t, torch.zeros(f, device=g.device), row_mask)
        gated_activation_triton(g, u, activation, counts)
        n = t if row_mask is None else int(row_mask.sum())
        assert torch.equal(counts.above_threshold, torch.full_like(counts.above_threshold, n))
        assert counts.tokens.item() == n


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_nan_preactivations_count_as_active_never_as_sparse(activation):
    # NaN > 0 is false: counting g > 0 would read a model gone NaN as perfectly sparse.
    t, f = 37, 129
    g, u = _inputs((t, f), torch.float32, seed=4)
    g[:, :10] = float("nan")  # ten neurons NaN on every token
    g[5] = float("nan")  # one token NaN on every neuron
    for row_mask in (None, (torch.arange(t) % 3 != 0).to(g.device)):
        fused = _count_target(f, t, None, row_mask)
        ref = _count_target(f, t, None, row_mask)
        gated_activation_triton(g, u, activation, fused)
        gated_activation_reference(g, u, activation, ref)
        n = t if row_mask is None else int(row_mask.sum())
        assert torch.equal(ref.active[:10], torch.full_like(ref.active[:10], n))
        counted_nan_row = row_mask is None or bool(row_mask[5])
        plain = (g[:, 10:] > 0) & (torch.arange(t, device=g.device) != 5)[:, None]
        if row_mask is not None:
            plain &= row_mask[:, None]
        assert torch.equal(ref.active[10:], plain.sum(0) + int(counted_nan_row))
        assert torch.equal(fused.active, ref.active)


def test_non_contiguous_inputs_and_dispatch():
    g, u = _inputs((70, 33), torch.float32, seed=5)
    gt, ut = g.t(), u.t()  # [33, 70], non-contiguous
    counts = _count_target(70, 33, None, None)
    counts_ref = _count_target(70, 33, None, None)
    h = gated_activation(gt, ut, "relu", counts, impl="triton")
    h_ref = gated_activation_reference(gt, ut, "relu", counts_ref)
    assert torch.equal(h, h_ref)
    assert torch.equal(counts.active, counts_ref.active)


def test_counting_does_not_change_output():
    g, u = _inputs((20, 50), torch.bfloat16, seed=9)
    thr = torch.rand(50, generator=torch.Generator().manual_seed(1)).to(g.device)
    h_off = gated_activation_triton(g, u, "silu", None)
    h_on = gated_activation_triton(g, u, "silu", _count_target(50, 20, thr, None))
    assert torch.equal(h_off, h_on)


def test_empty_input_counts_nothing():
    g = torch.empty((0, 16), device=DEVICE)
    counts = _count_target(16, 0, None, None)
    h = gated_activation_triton(g, g.clone(), "relu", counts)
    assert h.shape == (0, 16)
    assert counts.tokens.item() == 0 and counts.active.sum().item() == 0


def test_bad_count_targets_are_rejected():
    g, u = _inputs((4, 8), torch.float32, seed=1)
    no_thr = _count_target(8, 4, None, None)
    no_thr.above_threshold = torch.zeros(8, dtype=torch.int64, device=g.device)
    with pytest.raises(ValueError, match="needs CountTarget.thresholds"):
        gated_activation_triton(g, u, "relu", no_thr)
    with pytest.raises(ValueError, match="row_mask"):
        gated_activation_triton(g, u, "relu", _count_target(8, 4, None, torch.ones(4, device=g.device)))
    with pytest.raises(ValueError, match="active"):
        gated_activation_triton(g, u, "relu", _count_target(7, 4, None, None))
    bad_tokens = _count_target(8, 4, None, None)
    bad_tokens.tokens = torch.zeros(1, dtype=torch.int64, device=g.device)
    with pytest.raises(ValueError, match="tokens"):
        gated_activation_triton(g, u, "relu", bad_tokens)
    with pytest.raises(ValueError, match="unknown activation"):
        gated_activation_triton(g, u, "gelu", None)


def _boundary_thresholds(h: torch.Tensor, seed: int) -> torch.Tensor:
    """Per column, a threshold on or next to a bf16 rounding boundary of one of its real |h|
    values: the value itself (a tie), one fp32 step above / below it, the midpoints to its bf16
    neighbours, or one of 0, -1, +inf, NaN. Counting the fp32 product against a precomputed
    boundary must give the same answer as counting the stored bf16 h in every one of these."""
    f = h.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    rows = h.reshape(-1, f).float().abs()
    base = rows[torch.randint(0, rows.shape[0], (f,), generator=gen), torch.arange(f)].cpu()
    step = torch.tensor(2.0**-8) * base  # about half a bf16 ulp of base
    candidates = torch.stack(
        [
            base,
            torch.nextafter(base, torch.tensor(float("inf"))),
            torch.nextafter(base, torch.tensor(0.0)),
            base + step.to(torch.bfloat16).float(),
            base - step.to(torch.bfloat16).float(),
            torch.zeros(f),
            torch.full((f,), -1.0),
            torch.full((f,), float("inf")),
            torch.full((f,), float("nan")),
        ]
    )  # [9, f]
    pick = torch.randint(0, 5, (f,), generator=gen)
    pick[: 4 * (f // 9)] = torch.arange(4 * (f // 9)) % 9  # every kind appears in wide tiles
    return candidates[pick, torch.arange(f)].contiguous().to(h.device)


@pytest.mark.parametrize("thr_on_product", [False, True])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_threshold_compare_on_stored_h_or_product_counts_exactly(thr_on_product, activation, with_mask):
    # Both threshold compares (on the stored bf16 h, or on the fp32 product against a boundary
    # derived from τ, the default for bf16) count exactly what the reference counts on
    # the kernel's own stored h, with thresholds placed on bf16 rounding boundaries.
    t, f = 45, 137
    seed = _seed(thr_on_product, activation, with_mask)
    g, u = _inputs((t, f), torch.bfloat16, seed)
    h_plain = gated_activation_triton(g, u, activation, None)
    thr = _boundary_thresholds(h_plain, seed)
    mask = (torch.rand(t, generator=torch.Generator().manual_seed(seed)) > 0.3).to(g.device) if with_mask else None
    counts = _count_target(f, t, thr, mask)
    config = dataclasses.replace(forward_config(f, activation, True, g.dtype, g.device), thr_on_product=thr_on_product)
    h = gated_activation_forward(g, u, activation, counts, config)
    assert torch.equal(h, h_plain)
    own = _count_target(f, t, thr, mask)
    count_activations_reference(g, h, own)
    assert torch.equal(counts.active, own.active)
    assert torch.equal(counts.above_threshold, own.above_threshold)
    assert counts.tokens.item() == own.tokens.item()
    assert 0 < counts.above_threshold.sum() < counts.tokens.item() * f  # a real mix of counts


@pytest.mark.parametrize("thr_on_product", [False, True])
def test_threshold_count_at_exact_rounding_ties(thr_on_product):
    # ReLU products of bf16 values are exact in fp32, so some land exactly halfway between two
    # bf16 values. Each column gets such a product in its first row and, as threshold, the bf16
    # value just above it: round-to-nearest-even reaches that value only when its mantissa is
    # even, so about half the columns must count the tie and half must not.
    gen = torch.Generator().manual_seed(17)
    g = torch.rand(20000, generator=gen).add(1).to(torch.bfloat16)
    u = torch.rand(20000, generator=gen).add(1).to(torch.bfloat16)
    bits = (g.float() * u.float()).view(torch.int32)
    ties = torch.nonzero((bits & 0xFFFF) == 0x8000).flatten()[:96]
    f = ties.numel()
    assert f >= 64
    g2, u2 = _inputs((33, f), torch.bfloat16, seed=4)
    g2[0], u2[0] = g[ties].to(g2.device), u[ties].to(u2.device)
    upper = (bits[ties] + 0x8000).view(torch.float32)  # the bf16 value just above the tie
    counts = _count_target(f, 33, upper.to(g2.device).contiguous(), None)
    config = dataclasses.replace(forward_config(f, "relu", True, g2.dtype, g2.device), thr_on_product=thr_on_product)
    h = gated_activation_forward(g2, u2, "relu", counts, config)
    counted_tie = (h[0].float() >= upper.to(h.device)).cpu()
    assert 0 < int(counted_tie.sum()) < f  # both parities occur
    own = _count_target(f, 33, upper.to(g2.device).contiguous(), None)
    count_activations_reference(g2, h, own)
    assert torch.equal(counts.above_threshold, own.above_threshold)


def test_forward_config_rejects_what_its_tallies_cannot_hold():
    g, u = _inputs((8, 16), torch.float32, seed=2)
    counts = _count_target(16, 8, torch.zeros(16, device=g.device), None)
    config = forward_config(16, "relu", True, g.dtype, g.device)
    with pytest.raises(ValueError, match="rows"):
        gated_activation_forward(g, u, "relu", counts, dataclasses.replace(config, block_t=16, row_tiles=4096))
    with pytest.raises(ValueError, match="bf16"):
        gated_activation_forward(g, u, "relu", counts, dataclasses.replace(config, thr_on_product=True))
    with pytest.raises(TypeError, match="tile"):  # a typed, frozen config: no unknown knobs
        dataclasses.replace(config, tile=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.block_t = 32


def test_forward_config_rejects_invalid_launches():
    g, u = _inputs((8, 16), torch.bfloat16, seed=2)
    config = forward_config(16, "silu", False, g.dtype, g.device)
    assert config == forward_config(16, "silu", False, torch.bfloat16, str(g.device))
    for bad in (
        dict(block_f=48),
        dict(num_warps=3),
        dict(block_t=0),
        dict(row_tiles=0),
        dict(stages=0),
        dict(fix_ulps=0),
        dict(fix_ulps=1 << 14),
        dict(fix_min_g=float("nan")),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(config, **bad)
    if INTERPRETED:  # the fast SiLU's fix-up is PTX: compiled code only
        with pytest.raises(ValueError, match="fast_silu"):
            gated_activation_forward(g, u, "silu", None, dataclasses.replace(config, fast_silu=True))
    with pytest.raises(ValueError, match="fast_silu"):  # ... and watches bf16 midpoints only
        gated_activation_forward(
            g.float(), u.float(), "silu", None, dataclasses.replace(config, thr_on_product=False, fast_silu=True)
        )
    with pytest.raises(TypeError, match="ForwardConfig"):
        gated_activation_forward(g, u, "silu", None, dict(block_t=16))
    with pytest.raises(ValueError, match="contiguous"):
        gated_activation_forward(g.t(), u.t(), "silu")
    with pytest.raises(ValueError, match="must match"):
        gated_activation_forward(g, u[:4], "silu")
    with pytest.raises(ValueError, match="unknown activation"):
        forward_config(16, "gelu", False, g.dtype)


def test_forward_and_backward_launches_equal_the_autograd_function():
    g, u = _inputs((37, 129), torch.bfloat16, seed=8)
    dh = _inputs((37, 129), torch.bfloat16, seed=9)[0]
    for activation in ("relu", "silu"):
        g1, u1 = g.clone().requires_grad_(), u.clone().requires_grad_()
        h = gated_activation_triton(g1, u1, activation)
        dg, du = torch.autograd.grad(h, (g1, u1), dh)
        assert torch.equal(gated_activation_forward(g, u, activation), h)
        dg2, du2 = gated_activation_backward(dh, g, u, activation)
        assert torch.equal(dg2, dg) and torch.equal(du2, du)


# ----------------------------------------------------------------------------------------------
# Real GPU: large and many random shapes, compiled.


def _check_everything(shape, dtype, activation, seed, device="cuda"):
    g, u = _inputs(shape, dtype, seed, device)
    f = shape[-1]
    t = g.numel() // f
    thr = _thresholds_with_ties(gated_activation_reference(g, u, activation), seed)
    mask = (torch.rand(shape[:-1], generator=torch.Generator().manual_seed(seed)) > 0.1).to(device)
    counts, counts_ref = _count_target(f, t, thr, mask, device), _count_target(f, t, thr, mask, device)
    g1, u1 = g.clone().requires_grad_(), u.clone().requires_grad_()
    h = gated_activation_triton(g1, u1, activation, counts)
    g2, u2 = g.clone().requires_grad_(), u.clone().requires_grad_()
    h_ref = gated_activation_reference(g2, u2, activation, counts_ref)
    # On the GPU SiLU reproduces PyTorch's bits: exact math (fp32/fp16), or on bf16 the fast
    # exp2/reciprocal with the exact fix-up near bf16 rounding midpoints.
    _assert_outputs_match(h, h_ref, activation)
    if dtype == torch.bfloat16:
        assert torch.equal(h, h_ref), "bf16 h must equal the reference bit for bit"
    assert torch.equal(counts.active, counts_ref.active)
    assert torch.equal(counts.tokens, counts_ref.tokens)
    own = _count_target(f, t, thr, mask, device)
    count_activations_reference(g, h, own)
    assert torch.equal(counts.above_threshold, own.above_threshold)
    if torch.equal(h, h_ref):
        assert torch.equal(counts.above_threshold, counts_ref.above_threshold)
    dh = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(device)
    dg, du = torch.autograd.grad(h, (g1, u1), dh)
    dg_ref, du_ref = torch.autograd.grad(h_ref, (g2, u2), dh)
    _assert_outputs_match(dg, dg_ref, activation)
    _assert_outputs_match(du, du_ref, activation)
    return torch.equal(h, h_ref)


@gpu
@needs_compiled_gpu
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_gpu_training_shape_bf16(activation):
    bitwise = _check_everything((2, 4096, 4480), torch.bfloat16, activation, seed=11)
    assert bitwise, "compiled kernel should reproduce the reference h bit for bit"


@gpu
@needs_compiled_gpu
def test_gpu_many_random_shapes():
    gen = torch.Generator().manual_seed(123)
    for i in range(24):
        t = int(torch.randint(1, 3000, (1,), generator=gen))
        f = int(torch.randint(1, 3000, (1,), generator=gen))
        dtype = [torch.float32, torch.bfloat16, torch.float16][i % 3]
        _check_everything((t, f), dtype, ["relu", "silu"][i % 2], seed=i)


def _all_bf16(device="cuda") -> torch.Tensor:
    """Every bf16 bit pattern (NaNs and infinities included), [65536]."""
    return torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32, device=device).to(torch.int16).view(torch.bfloat16)


def _bitwise_or_both_nan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int16) == b.view(torch.int16)) | (torch.isnan(a) & torch.isnan(b))


# The fast SiLU runs only on the GPU generations its exhaustive check covers; elsewhere these two
# tests would test nothing (exact math throughout) or fail for the wrong reason.
needs_fast_silu_gpu = pytest.mark.skipif(
    INTERPRETED or not torch.cuda.is_available() or not fast_silu_enabled("cuda"),
    reason="needs a GPU generation the fast SiLU is enabled on (fast_silu_enabled)",
)


@gpu
@needs_fast_silu_gpu
@pytest.mark.parametrize("count", [False, True], ids=["nocount", "count"])
def test_gpu_fast_silu_all_bf16_pairs(count):
    # The proof of the fast SiLU: for every one of the 2^32 bf16 (g, u) pairs, h equals PyTorch's
    # bit for bit (NaN payloads aside), and with counting the counts equal the reference's, with
    # thresholds on and next to the bf16 rounding boundaries of each column's own values.
    assert forward_config(65536, "silu", count, torch.bfloat16, "cuda").fast_silu
    values = _all_bf16()
    rows = 2048
    g = values[None, :].expand(rows, -1).contiguous()  # [rows, 65536]: column j holds g = values[j]
    for start in range(0, values.numel(), rows):
        u = values[start : start + rows, None].expand(-1, values.numel()).contiguous()  # [rows, 65536]
        h_ref = gated_activation_reference(g, u, "silu")
        thr = _boundary_thresholds(h_ref, seed=start) if count else None
        counts = _count_target(values.numel(), rows, thr, None, "cuda") if count else None
        ref = _count_target(values.numel(), rows, thr, None, "cuda") if count else None
        h = gated_activation_forward(g, u, "silu", counts)
        same = _bitwise_or_both_nan(h, h_ref)
        assert bool(same.all()), f"u rows {start}..: {int((~same).sum())} elements differ"
        if count:
            count_activations_reference(g, h_ref, ref)
            assert torch.equal(counts.active, ref.active)
            assert torch.equal(counts.above_threshold, ref.above_threshold)
        del u, h_ref, h


@gpu
@needs_fast_silu_gpu
def test_gpu_fast_silu_without_its_fixup_differs():
    # The exhaustive test above can fail: with the fix-up narrowed to exact midpoints and no g
    # cut-off, the fast product alone rounds some bf16 pairs differently from PyTorch.
    values = _all_bf16()
    g = values[None, :].expand(1024, -1).contiguous()
    u = values[48000:49024, None]  # u from about 0.1 to 1
    u = u.expand(-1, values.numel()).contiguous()
    config = dataclasses.replace(
        forward_config(g.shape[1], "silu", False, g.dtype, g.device), fix_ulps=1, fix_min_g=1e30
    )
    h = gated_activation_forward(g, u, "silu", None, config)
    assert int((~_bitwise_or_both_nan(h, gated_activation_reference(g, u, "silu"))).sum()) > 0


def _packed_equals_separate(shape, dtype, activation: str, seed: int) -> None:
    """gated_activation_packed on gu = (g, u) side by side: the same h, counts and gradients
    (d(gu) = (dg, du)) bit for bit as the two-tensor kernel, the launches being the same code."""
    from megasparse.kernels.gated_activation import gated_activation_packed

    g, u = _inputs(shape, dtype, seed)
    gu = torch.cat([g, u], dim=-1).requires_grad_()
    g, u = g.clone().requires_grad_(), u.clone().requires_grad_()
    f, t = shape[-1], g.numel() // shape[-1]
    thresholds = torch.rand(f, generator=torch.Generator().manual_seed(seed)).to(DEVICE) * 0.5
    mask = (torch.arange(t, device=DEVICE) % 3) != 0
    separate, packed = (_count_target(f, t, thresholds, mask) for _ in range(2))
    h = gated_activation(g, u, activation, separate, impl="triton")
    h_packed = gated_activation_packed(gu, activation, packed, impl="triton")
    assert torch.equal(h_packed, h)
    for name in ("active", "above_threshold", "tokens"):
        assert torch.equal(getattr(packed, name), getattr(separate, name)), name
    assert int(separate.active.sum()) > 0 and int(separate.above_threshold.sum()) > 0
    dh = torch.randn(h.shape, generator=torch.Generator().manual_seed(seed + 2)).to(dtype).to(DEVICE)
    (h * dh).sum().backward()
    (h_packed * dh).sum().backward()
    assert torch.equal(gu.grad, torch.cat([g.grad, u.grad], dim=-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_packed_gate_up_equals_separate_tensors(dtype, activation):
    _packed_equals_separate((3, 7, 80), dtype, activation, seed=_seed("packed", dtype, activation))


@gpu
@needs_compiled_gpu
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_gpu_packed_gate_up_at_training_shape(activation):
    _packed_equals_separate((2, 4096, 1920), torch.bfloat16, activation, seed=21)

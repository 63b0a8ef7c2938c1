"""The chunked head + cross-entropy against the unchunked PyTorch computation.

Reference: ``F.cross_entropy(F.linear(h * scale, W).float(), labels)`` with autograd. Random data;
shapes include a token count that is not a multiple of the chunk, a chunk larger than the input,
and ignored labels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from megasparse.kernels.linear_cross_entropy import linear_cross_entropy

SCALE = 0.37  # not a power of two: rounding of h · scale matters
# (tokens, chunk): ragged last chunk, exact multiple, one chunk larger than the input, chunk of 1.
SHAPES = [(37, 8), (64, 16), (50, 128), (9, 1)]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _inputs(n: int, d: int, v: int, dtype: torch.dtype, seed: int, ignore_every: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g).to(dtype)
    weight = (torch.randn(v, d, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        labels[::ignore_every] = -100
    return hidden, weight, labels


def _run(fn, hidden, weight, labels, grad_scale: float = 1.0):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    loss = fn(h, w, labels)
    (loss * grad_scale).backward()
    return loss.detach(), h.grad, w.grad


def _reference(h, w, labels):
    return F.cross_entropy(F.linear(h * SCALE, w).float(), labels)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n,chunk", SHAPES)
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_matches_unchunked_loss_and_gradients(dtype, n, chunk, ignore_every):
    hidden, weight, labels = _inputs(n, 48, 257, dtype, seed=n * 31 + chunk, ignore_every=ignore_every)
    chunked = lambda h, w, y: linear_cross_entropy(h, w, y, scale=SCALE, chunk_tokens=chunk)  # noqa: E731
    loss, dh, dw = _run(chunked, hidden, weight, labels, grad_scale=1.7)
    ref_loss, ref_dh, ref_dw = _run(_reference, hidden, weight, labels, grad_scale=1.7)

    assert loss.dtype == torch.float32 and loss.shape == ()
    assert dh.dtype == dtype and dw.dtype == dtype
    assert math.isclose(float(loss), float(ref_loss), rel_tol=TOL[dtype] / 4)
    assert _rel(dh, ref_dh) < TOL[dtype]
    assert _rel(dw, ref_dw) < TOL[dtype]
    if ignore_every:
        # Ignored tokens get exactly no gradient.
        assert torch.all(dh[labels == -100] == 0)


def test_gradients_accumulate_into_tied_weight():
    """A weight used elsewhere too (the tied embedding) receives the sum of both gradients."""
    hidden, weight, labels = _inputs(21, 16, 97, torch.float32, seed=5)
    tokens = torch.randint(0, 97, (21,), generator=torch.Generator().manual_seed(6))

    def tied(fn):
        w = weight.clone().requires_grad_()
        h = F.embedding(tokens, w) + hidden  # [N, d]
        fn(h, w, labels).backward()
        return w.grad

    chunked = tied(lambda h, w, y: linear_cross_entropy(h, w, y, scale=SCALE, chunk_tokens=4))
    assert _rel(chunked, tied(_reference)) < 1e-5


def test_no_grad_and_frozen_weight():
    hidden, weight, labels = _inputs(30, 24, 131, torch.float32, seed=11, ignore_every=4)
    ref = _reference(hidden, weight, labels)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden.requires_grad_(), weight, labels, scale=SCALE, chunk_tokens=7)
    assert loss.grad_fn is None
    assert math.isclose(float(loss), float(ref), rel_tol=1e-6)

    # Only the hidden state trains: the weight gets no gradient, the hidden one is still right.
    h = hidden.detach().clone().requires_grad_()
    linear_cross_entropy(h, weight, labels, scale=SCALE, chunk_tokens=7).backward()
    h_ref = hidden.detach().clone().requires_grad_()
    _reference(h_ref, weight, labels).backward()
    assert weight.grad is None
    assert _rel(h.grad, h_ref.grad) < 1e-5


def test_all_labels_ignored_gives_nan_like_cross_entropy():
    hidden, weight, _ = _inputs(6, 8, 17, torch.float32, seed=2)
    labels = torch.full((6,), -100)
    assert math.isnan(float(F.cross_entropy(F.linear(hidden, weight), labels)))
    assert math.isnan(float(linear_cross_entropy(hidden, weight, labels, chunk_tokens=4)))


@pytest.mark.parametrize("bad", ["labels", "width", "dtype", "chunk"])
def test_rejects_bad_inputs(bad):
    hidden, weight, labels = _inputs(8, 8, 17, torch.float32, seed=3)
    kwargs = dict(chunk_tokens=4)
    if bad == "labels":
        labels = labels[:5]
    elif bad == "width":
        weight = weight[:, :6]
    elif bad == "dtype":
        weight = weight.to(torch.bfloat16)
    else:
        kwargs = dict(chunk_tokens=0)
    with pytest.raises(ValueError):
        linear_cross_entropy(hidden, weight, labels, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_peak_memory_stays_below_full_logits():
    """At a training-like shape the extra memory is about one chunk of logits, not N × V."""
    n, d, v, chunk = 8192, 768, 122880, 1024
    hidden, weight, labels = (t.cuda() for t in _inputs(n, d, v, torch.bfloat16, seed=1))
    hidden.requires_grad_()
    weight.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = linear_cross_entropy(hidden, weight, labels, scale=SCALE, chunk_tokens=chunk)
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    full_logits_fp32 = n * v * 4
    assert extra < full_logits_fp32 / 2
    ref_loss, ref_dh, ref_dw = _run(_reference, hidden.detach(), weight.detach(), labels)
    assert math.isclose(float(loss.detach()), float(ref_loss), rel_tol=5e-3)
    assert _rel(hidden.grad, ref_dh) < 2e-2 and _rel(weight.grad, ref_dw) < 2e-2


# --- The fused Triton path (compiled on a GPU, interpreted on the CPU: see conftest.py) ---

KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _row_reference(z: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100):
    """Per-row loss and (softmax − onehot)/n_valid in float64, 0 on ignored rows."""
    z64 = z.double()
    valid = labels != ignore_index
    safe = labels.masked_fill(~valid, 0)
    lse = torch.logsumexp(z64, dim=-1)
    loss = (lse - z64.gather(1, safe[:, None]).squeeze(1)).masked_fill(~valid, 0.0)
    grad = torch.softmax(z64, dim=-1)
    grad[torch.arange(len(labels)), safe] -= 1.0
    grad *= (valid.double() / valid.sum()).unsqueeze(1)
    return loss, grad


# Vocabulary sizes: below one block, a power of two, and several blocks with a ragged last one
# (the interpreter's block is ≤ 1024; on the GPU it is 4096, so 9001 is ragged there).
@pytest.mark.parametrize("vocab", [7, 257, 1024, 2500, 9001])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_rows_kernel_matches_float64_softmax(vocab, dtype):
    from megasparse.kernels.triton_cross_entropy import cross_entropy_rows_

    g = torch.Generator().manual_seed(vocab)
    rows = 13
    # A wide spread of logits (σ = 6) so the running max really moves between blocks.
    z = (torch.randn(rows, vocab, generator=g) * 6).to(dtype).to(KERNEL_DEVICE)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[[2, 7]] = -100
    labels = labels.to(KERNEL_DEVICE)
    ref_loss, ref_grad = _row_reference(z, labels)
    inv_n = (1.0 / (labels != -100).sum().float()).reshape(1)

    loss_only = cross_entropy_rows_(z.clone(), labels, inv_n, -100, with_grad=False)
    dz = z.clone()
    loss = cross_entropy_rows_(dz, labels, inv_n, -100, with_grad=True)

    assert torch.equal(loss, loss_only)
    assert torch.allclose(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    assert torch.all(loss[[2, 7]] == 0) and torch.all(dz[[2, 7]] == 0)
    # dz is rounded once to the logits' dtype: within half an ulp of that dtype, plus fp32 exp error.
    ulp = {torch.float32: 1e-6, torch.bfloat16: 8e-3}[dtype]
    assert torch.allclose(dz.double(), ref_grad, rtol=ulp, atol=ulp * ref_grad.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n,chunk", [(37, 8), (50, 128)])
def test_fused_linear_cross_entropy_matches_reference_impl(dtype, n, chunk):
    hidden, weight, labels = _inputs(n, 48, 1500, dtype, seed=n + chunk, ignore_every=5)
    hidden, weight, labels = hidden.to(KERNEL_DEVICE), weight.to(KERNEL_DEVICE), labels.to(KERNEL_DEVICE)

    def run(impl):
        return _run(
            lambda h, w, y: linear_cross_entropy(h, w, y, scale=SCALE, chunk_tokens=chunk, impl=impl),
            hidden,
            weight,
            labels,
            grad_scale=1.7,
        )

    (loss, dh, dw), (ref_loss, ref_dh, ref_dw) = run("triton"), run("reference")
    # bf16: dz may round to the neighbouring bf16 value (exp(z − lse) vs exp(z − m)/Σ), ~0.4% apart.
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    assert math.isclose(float(loss), float(ref_loss), rel_tol=1e-5)
    assert _rel(dh, ref_dh) < tol and _rel(dw, ref_dw) < tol
    assert torch.all(dh[labels == -100] == 0)
    with torch.no_grad():
        no_grad_loss = linear_cross_entropy(hidden, weight, labels, scale=SCALE, chunk_tokens=chunk, impl="triton")
    assert math.isclose(float(no_grad_loss), float(ref_loss), rel_tol=1e-5)


def test_fused_rejects_strided_logits():
    from megasparse.kernels.triton_cross_entropy import cross_entropy_rows_

    z = torch.randn(8, 6).t()  # [6, 8] with column stride 6
    with pytest.raises(ValueError, match="contiguous rows"):
        cross_entropy_rows_(z, torch.zeros(6, dtype=torch.long), torch.ones(1), -100, with_grad=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_fused_at_training_vocabulary():
    """bf16, the paper's padded vocabulary: the fused path against the PyTorch path, and its memory."""
    n, d, v, chunk = 8192, 768, 122880, 8192
    hidden, weight, labels = (t.cuda() for t in _inputs(n, d, v, torch.bfloat16, seed=3, ignore_every=9))
    results = {}
    for impl in ("reference", "triton"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        results[impl] = _run(
            lambda h, w, y: linear_cross_entropy(h, w, y, scale=SCALE, chunk_tokens=chunk, impl=impl),
            hidden,
            weight,
            labels,
        )
        results[impl + "_extra"] = torch.cuda.max_memory_allocated() - base
    (loss, dh, dw), (ref_loss, ref_dh, ref_dw) = results["triton"], results["reference"]
    assert math.isclose(float(loss), float(ref_loss), rel_tol=1e-5), (float(loss), float(ref_loss))
    # As in the CPU test: bf16 dz may round to the neighbouring value.
    assert _rel(dh, ref_dh) < 1e-2 and _rel(dw, ref_dw) < 1e-2, (_rel(dh, ref_dh), _rel(dw, ref_dw))
    # The reference holds a chunk's logits as fp32 plus a bf16 copy (6 bytes each), the fused path
    # only the bf16 logits (2 bytes): at this chunk size its extra memory is well under half.
    assert results["triton_extra"] < results["reference_extra"] / 2, (
        results["triton_extra"],
        results["reference_extra"],
    )

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
    assert math.isclose(float(loss), float(ref_loss), rel_tol=5e-3)
    assert _rel(hidden.grad, ref_dh) < 2e-2 and _rel(weight.grad, ref_dw) < 2e-2

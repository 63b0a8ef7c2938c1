"""The fused CETT probe tail against the tensor path it replaces: the same entries kept, bit for bit.

Without a GPU the kernel runs under Triton's CPU interpreter (see conftest.py) at small shapes;
with one it is compiled, and the test also covers a training-sized layer.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from megasparse.kernels.triton_cett_tail import cett_tail  # noqa: E402
from megasparse.sparsity.cett import neuron_output_norms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(h: torch.Tensor, column_norms: torch.Tensor, tau: float) -> torch.Tensor:
    norms = neuron_output_norms(h, column_norms)
    return torch.where(norms <= tau, h, torch.zeros((), dtype=h.dtype, device=h.device))


def _layer(tokens: int, width: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    # ReLU-like h: many exact zeros, a heavy tail, and a few tiny values near float32's subnormals
    h = torch.relu(torch.randn(tokens, width, generator=gen)) * torch.rand(tokens, width, generator=gen) * 4
    h[torch.rand(tokens, width, generator=gen) < 0.01] = 1e-37
    h = (h * torch.where(torch.rand(tokens, width, generator=gen) < 0.3, -1.0, 1.0)).to(dtype)
    column_norms = torch.rand(width, generator=gen) * 3
    column_norms[::7] = 0.0  # zero columns: norm 0, always in the tail
    return h.to(DEVICE), column_norms.to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(37, 200), (64, 128), (5, 3)])
def test_tail_matches_the_tensor_path_bit_for_bit(dtype, shape):
    h, column_norms = _layer(*shape, dtype, seed=shape[0] * 1000 + shape[1])
    norms = neuron_output_norms(h, column_norms)
    # thresholds at the grid's ends, at 0 and exactly at stored norms (the ≤ boundary itself)
    taus = [0.0, float(norms.median()), float(norms.max()), float(norms.flatten()[norms.numel() // 3]), 1e-36]
    for tau in taus:
        got = cett_tail(h, column_norms, tau)
        want = _reference(h, column_norms, tau)
        assert torch.equal(
            got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
            want.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
        ), tau
        assert 0 < int((got != 0).sum()) or tau == 0.0 or int((h != 0).sum()) == 0


def test_tail_writes_into_a_given_buffer_and_refuses_bad_shapes():
    h, column_norms = _layer(16, 64, torch.bfloat16, seed=3)
    out = torch.full_like(h, 7.0)
    tau = float(neuron_output_norms(h, column_norms).median())
    assert cett_tail(h, column_norms, tau, out=out) is out
    assert torch.equal(out, _reference(h, column_norms, tau))
    with pytest.raises(ValueError, match="column_norms must be float32"):
        cett_tail(h, column_norms.double(), tau)
    with pytest.raises(ValueError, match="contiguous"):
        cett_tail(h.t(), column_norms, tau)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a training-sized layer is for the compiled kernel")
def test_tail_matches_at_a_training_shape_on_the_gpu():
    h, column_norms = _layer(32768, 1920, torch.bfloat16, seed=11)
    norms = neuron_output_norms(h, column_norms)
    for q in (0.1, 0.5, 0.97):
        tau = float(norms.flatten()[::97].float().quantile(q))
        assert torch.equal(cett_tail(h, column_norms, tau), _reference(h, column_norms, tau)), q

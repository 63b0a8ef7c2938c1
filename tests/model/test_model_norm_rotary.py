"""RMSNorm and RoPE against small hand-written references."""

from __future__ import annotations

import math

import torch

from megasparse.model.norm import RMSNorm
from megasparse.model.rotary import apply_rotary, rotary_cos_sin


def test_rmsnorm_matches_formula():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8))
    x = torch.randn(3, 5, 8)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x), expected)


def test_rmsnorm_eps_matters_and_bf16_is_computed_in_fp32():
    norm = RMSNorm(4, eps=0.5)
    x = torch.tensor([[0.3, -0.1, 0.2, 0.4]])
    expected = x / math.sqrt((x.pow(2).mean() + 0.5).item())
    torch.testing.assert_close(norm(x), expected)
    # A bf16 model (weights bf16, as under DeepSpeed bf16) normalises in fp32, then rounds once.
    xb = (torch.randn(2, 64) * 300).bfloat16()
    out = RMSNorm(64, eps=1e-5).bfloat16()(xb)
    assert out.dtype == torch.bfloat16
    ref = xb.float() / torch.sqrt(xb.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(out, ref.bfloat16(), rtol=0, atol=0)


def test_rope_matches_pairwise_rotation():
    hd, s, base = 8, 6, 10000.0
    x = torch.randn(2, 3, s, hd)  # [b, heads, s, hd]
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]])  # per-sequence, with a reset
    cos, sin = rotary_cos_sin(positions, hd, base, torch.float32)
    out = apply_rotary(x, cos, sin)
    expected = torch.empty_like(x)
    for bi in range(2):
        for t in range(s):
            for j in range(hd // 2):
                angle = positions[bi, t].item() * base ** (-2 * j / hd)
                a, b = x[bi, :, t, j], x[bi, :, t, j + hd // 2]  # channel j pairs with j + hd/2
                expected[bi, :, t, j] = a * math.cos(angle) - b * math.sin(angle)
                expected[bi, :, t, j + hd // 2] = a * math.sin(angle) + b * math.cos(angle)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_rope_is_relative_and_norm_preserving():
    hd = 16
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def score(pq: int, pk: int) -> float:
        cq, sq = rotary_cos_sin(torch.tensor([[pq]]), hd, 10000.0, torch.float32)
        ck, sk = rotary_cos_sin(torch.tensor([[pk]]), hd, 10000.0, torch.float32)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    assert math.isclose(score(7, 3), score(104, 100), rel_tol=1e-4)
    cos, sin = rotary_cos_sin(torch.tensor([[123]]), hd, 10000.0, torch.float32)
    torch.testing.assert_close(apply_rotary(q, cos, sin).norm(), q.norm())

"""A bf16 model (as under DeepSpeed bf16) computes the same function as the fp32 one."""

from __future__ import annotations

import torch

from megasparse.model import Transformer


def test_bf16_logits_follow_fp32(make_config):
    model = Transformer(make_config(), seed=0)
    tokens = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        full = model(tokens)
        half = model.to(torch.bfloat16)(tokens)
    assert half.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: small errors on average, the argmax mostly survives.
    error = (half.float() - full).abs()
    assert error.mean() < 0.03 * full.std()
    assert error.max() < 0.3 * full.std()
    assert (half.float().argmax(-1) == full.argmax(-1)).float().mean() > 0.8

"""model.attention_bias: q/k/v biases (Qwen2's attention) for imported models; off by default."""

from __future__ import annotations

import torch

from megasparse.config import ModelConfig
from megasparse.model.mup import mup_param_groups
from megasparse.model.roles import parameter_roles
from megasparse.model.transformer import Transformer


def _config(**kw) -> ModelConfig:
    return ModelConfig(hidden_size=32, num_layers=2, ffn_size=64, head_dim=8, vocab_size=100, **kw)


def test_biases_only_on_q_k_v_and_only_when_asked():
    plain = Transformer(_config(), seed=0)
    assert not [n for n, _ in plain.named_parameters() if n.endswith("bias")]
    model = Transformer(_config(attention_bias=True), seed=0)
    biases = sorted(n for n, _ in model.named_parameters() if n.endswith("bias"))
    assert biases == sorted(f"layers.{i}.attn.{p}_proj.bias" for i in range(2) for p in "qkv")


def test_biases_start_at_zero_train_at_the_unscaled_rate_and_change_the_output():
    model = Transformer(_config(attention_bias=True), seed=0)
    roles = parameter_roles(model)
    assert {roles[n] for n, _ in model.named_parameters() if n.endswith("bias")} == {"bias"}
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in model.named_parameters() if n.endswith("bias"))
    groups = {g["name"]: g for g in mup_param_groups(model, model.config, weight_decay=0.1)}
    bias_ids = {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    assert bias_ids <= {id(p) for p in groups["unscaled"]["params"]} and groups["unscaled"]["lr_scale"] == 1.0
    tokens = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    before = model(tokens)
    with torch.no_grad():
        model.layers[0].attn.v_proj.bias.fill_(0.5)
    assert not torch.allclose(before, model(tokens))


def test_fused_projections_keep_the_biases():
    from megasparse.model.fast_path import apply_fast_path

    model = Transformer(_config(attention_bias=True), seed=0)
    with torch.no_grad():  # non-zero biases on random data, so that dropping one shows
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(generator=torch.Generator().manual_seed(len(name)))
    tokens = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    plain = model(tokens)
    assert apply_fast_path(model, fused_projections=True, bshd_layout=False, fused_residual_norm=False)["attention"]
    torch.testing.assert_close(model(tokens), plain, rtol=1e-5, atol=1e-5)

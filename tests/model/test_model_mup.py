"""µP: the forward against a hand-written one-layer reference, init scales, optimizer groups."""

from __future__ import annotations

import math

import torch

from megasparse.model import Transformer, mup_param_groups


def reference_forward(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The paper's µP decoder written out with plain tensor ops, from the model's weights."""
    c = model.config
    w = {k: v.detach() for k, v in model.state_dict().items()}
    b, s = tokens.shape
    heads, hd = c.num_heads, c.head_dim

    def rms(x, weight):
        return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps)

    def rope(x):  # x: [b, heads, s, hd]; rotate pair (j, j + hd/2) by pos · base^(-2j/hd)
        half = hd // 2
        theta = c.rope_base ** (-torch.arange(half, dtype=torch.float64) * 2 / hd)
        angle = torch.arange(s, dtype=torch.float64)[:, None] * theta  # [s, half]
        z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angle), angle)
        return torch.cat((z.real, z.imag), dim=-1).float()

    x = w["embed.weight"][tokens] * 12.0  # scale_emb
    residual = 1.4 / math.sqrt(1)  # scale_depth / √L, L = 1
    p = "layers.0."
    h = rms(x, w[p + "attn_norm.weight"])
    q = (h @ w[p + "attn.q_proj.weight"].T).view(b, s, heads, hd).transpose(1, 2)
    k = (h @ w[p + "attn.k_proj.weight"].T).view(b, s, heads, hd).transpose(1, 2)
    v = (h @ w[p + "attn.v_proj.weight"].T).view(b, s, heads, hd).transpose(1, 2)
    q, k = rope(q), rope(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # [b, heads, s, s]
    scores = scores.masked_fill(torch.ones(s, s).triu(1).bool(), float("-inf"))
    attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, heads * hd)
    x = x + residual * (attn @ w[p + "attn.o_proj.weight"].T)
    h = rms(x, w[p + "mlp_norm.weight"])
    gate = torch.relu(h @ w[p + "mlp.gate_proj.weight"].T)
    x = x + residual * ((gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T)
    x = rms(x, w["final_norm.weight"])
    return (x / (64 / 256)) @ w["embed.weight"].T  # logits ÷ scale_width


def test_forward_matches_hand_written_reference(make_config):
    model = Transformer(make_config(num_layers=1), seed=3)
    with torch.no_grad():  # random (not unit) norm weights, so the test sees them
        for norm in (model.layers[0].attn_norm, model.layers[0].mlp_norm, model.final_norm):
            norm.weight.uniform_(0.5, 1.5)
    tokens = torch.randint(0, 100, (2, 12))
    torch.testing.assert_close(model(tokens), reference_forward(model, tokens), rtol=1e-4, atol=1e-4)


def test_init_scales(make_config):
    config = make_config(hidden_size=512, head_dim=64, ffn_size=1280, vocab_size=2000, num_layers=1)
    model = Transformer(config, seed=0)
    assert abs(model.embed.weight.std().item() - 0.1) < 0.002
    matrix_std = 0.1 / math.sqrt(512 / 256)
    block = model.layers[0]
    for linear in (block.attn.q_proj, block.attn.o_proj, block.mlp.gate_proj, block.mlp.down_proj):
        assert abs(linear.weight.std().item() - matrix_std) < 0.002
        assert abs(linear.weight.mean().item()) < 0.002
    for norm in (block.attn_norm, block.mlp_norm, model.final_norm):
        assert torch.equal(norm.weight, torch.ones(512))


def test_untied_head_is_separate_and_embedding_like(make_config):
    model = Transformer(make_config(tie_embeddings=False, vocab_size=2000, hidden_size=256, head_dim=64))
    assert model.head_weight is model.lm_head.weight
    assert model.head_weight.data_ptr() != model.embed.weight.data_ptr()
    assert abs(model.lm_head.weight.std().item() - 0.1) < 0.003
    tied = Transformer(make_config())
    assert tied.head_weight is tied.embed.weight


def test_param_groups_scale_matrix_lr(make_config):
    config = make_config(hidden_size=128, head_dim=32, ffn_size=320)  # scale_width = 0.5
    model = Transformer(config)
    groups = {g["name"]: g for g in mup_param_groups(model, config, weight_decay=0.1, lr=0.01)}
    assert set(groups) == {"unscaled", "matrix"}
    assert groups["unscaled"]["params"][0] is model.embed.weight
    assert len(groups["unscaled"]["params"]) == 1 + 2 * 2 + 1  # the embedding and every norm
    assert len(groups["matrix"]["params"]) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert groups["matrix"]["lr_scale"] == 2.0 and groups["matrix"]["lr"] == 0.02
    assert groups["unscaled"]["lr"] == 0.01
    assert all(g["weight_decay"] == 0.1 for g in groups.values())  # the paper decays all groups
    # Every parameter in exactly one group, and torch's optimizer accepts the groups as they are.
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    optimizer = torch.optim.AdamW(list(groups.values()), lr=1.0)
    assert sorted(g["lr"] for g in optimizer.param_groups) == [0.01, 0.02]


def test_param_groups_untied_head_and_no_decay_option(make_config):
    config = make_config(tie_embeddings=False)
    model = Transformer(config)
    found = mup_param_groups(model, config, weight_decay=0.1, decay_norms_and_embeddings=False)
    groups = {g["name"]: g for g in found}
    embedding_like = {id(model.embed.weight), id(model.lm_head.weight)}
    unscaled = {id(p) for p in groups["unscaled"]["params"]}
    assert embedding_like < unscaled and len(unscaled) == 2 + 2 * 2 + 1  # and every norm
    assert groups["unscaled"]["weight_decay"] == 0.0
    assert groups["matrix"]["weight_decay"] == 0.1
    assert "lr" not in groups["matrix"]

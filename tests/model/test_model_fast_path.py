"""The fast path (megasparse/model/fast_path.py) computes the plain model's function: each switch
alone and all together, eager and compiled, with activation checkpointing and counters on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_model_config import tiny_config

from megasparse.model import Transformer
from megasparse.model.compile_regions import compile_regions
from megasparse.model.fast_path import apply_fast_path
from megasparse.sparsity.counters import ActivationCounters, attach_counters

SWITCHES = ("fused_projections", "bshd_layout", "fused_residual_norm")


def _run(switches: dict, compiled: bool, checkpointing: bool, tokens: torch.Tensor):
    cfg = tiny_config(num_layers=2)
    model = Transformer(cfg, seed=3, activation_checkpointing=checkpointing)
    counters = ActivationCounters(range(cfg.num_layers), cfg.ffn_size)
    attach_counters(model, counters)
    for mlp in model.mlps():
        mlp.counter_impl = "reference"
    names = list(model.state_dict())
    apply_fast_path(model, **{name: switches.get(name, False) for name in SWITCHES})
    if compiled:
        compile_regions(model)
    assert list(model.state_dict()) == names, "the fast path must not rename parameters"
    logits = model(tokens[:, :-1])  # [b, s, V]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    loss.backward()
    return loss, dict(model.named_parameters()), counters


@pytest.mark.parametrize(
    "switches, compiled",
    [({name: True}, False) for name in SWITCHES] + [(dict.fromkeys(SWITCHES, True), True)],
    ids=[*SWITCHES, "all-compiled"],
)
def test_fast_path_matches_plain_model(switches, compiled):
    tokens = torch.randint(0, 100, (2, 17), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_params, ref_counts = _run({}, False, True, tokens)
    loss, params, counts = _run(switches, compiled, True, tokens)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, p in params.items():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
    # Counted once per token (no recount under recomputation), the same neurons.
    assert torch.equal(counts.active, ref_counts.active) and int(counts.active.sum()) > 0
    assert torch.equal(counts.tokens, ref_counts.tokens) and int(counts.tokens[0]) == tokens[:, :-1].numel()


def test_hooked_projections_take_the_plain_path():
    """A probe on gate_proj (as the measurement passes use) still sees its output."""
    cfg = tiny_config(num_layers=1)
    model = Transformer(cfg, seed=3)
    apply_fast_path(model, fused_projections=True, bshd_layout=True, fused_residual_norm=True)
    seen = []
    model.layers[0].mlp.gate_proj.register_forward_hook(lambda _m, _a, out: seen.append(out.shape))
    model.layers[0].attn.q_proj.register_forward_hook(lambda _m, _a, out: seen.append(out.shape))
    model(torch.randint(0, 100, (2, 8)))
    assert seen == [(2, 8, cfg.attention_size), (2, 8, cfg.ffn_size)]

"""The counting hook on every MLP, and activation checkpointing that does not count twice."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from megasparse.kernels.gated_activation import CountTarget
from megasparse.model import Transformer, in_recompute


class RecordingSlot:
    """Counts on normal forwards, declines during recomputation, and records both."""

    def __init__(self, ffn_size: int) -> None:
        self.target_ = CountTarget(
            active=torch.zeros(ffn_size, dtype=torch.int64), tokens=torch.zeros((), dtype=torch.int64)
        )
        self.counted_calls = 0
        self.recompute_calls = 0

    def target(self, h_shape: torch.Size) -> Optional[CountTarget]:
        if in_recompute():
            self.recompute_calls += 1
            return None
        self.counted_calls += 1
        return self.target_


def attach_slots(model: Transformer) -> list[RecordingSlot]:
    slots = []
    for mlp in model.mlps():
        mlp.count_slot = RecordingSlot(model.config.ffn_size)
        mlp.counter_impl = "reference"
        slots.append(mlp.count_slot)
    return slots


def loss_and_grads(model: Transformer, tokens: torch.Tensor):
    model.zero_grad()
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("mode", [True, "attention", "mlp"])
def test_checkpointing_gives_identical_loss_and_gradients(make_config, activation, mode):
    config = make_config(activation=activation)
    tokens = torch.randint(0, 100, (2, 17))
    plain = Transformer(config, seed=1)
    checkpointed = Transformer(config, seed=1, activation_checkpointing=mode)
    loss_a, grads_a = loss_and_grads(plain, tokens)
    loss_b, grads_b = loss_and_grads(checkpointed, tokens)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("checkpointing", [False, True, "full", "attention", "mlp"])
def test_each_mlp_counts_exactly_once_per_step(make_config, checkpointing):
    model = Transformer(make_config(num_layers=3), seed=2)
    model.enable_activation_checkpointing(checkpointing)
    slots = attach_slots(model)
    attention_runs = []
    model.layers[1].attn.register_forward_pre_hook(lambda *_: attention_runs.append(in_recompute()))
    tokens = torch.randint(0, 100, (2, 9))
    loss_and_grads(model, tokens)
    assert not in_recompute()
    recomputes_mlp = checkpointing in (True, "full", "mlp")  # "attention" leaves the MLP stored
    recomputes_attention = checkpointing in (True, "full", "attention")
    assert attention_runs == [False, True] if recomputes_attention else [False], attention_runs
    for slot in slots:
        assert slot.counted_calls == 1
        assert slot.recompute_calls == (1 if recomputes_mlp else 0)
        assert slot.target_.tokens.item() == 2 * 8


def test_layer_indices_and_counts_match_the_activations(make_config):
    model = Transformer(make_config(num_layers=2), seed=4)
    assert [mlp.layer_index for mlp in model.mlps()] == [0, 1]
    slots = attach_slots(model)
    captured = {}
    gate = model.layers[1].mlp.gate_proj
    gate.register_forward_hook(lambda m, i, out: captured.update(g=out.detach()))
    tokens = torch.randint(0, 100, (3, 10))
    with torch.no_grad():
        model(tokens)
    expected = (captured["g"] > 0).sum(dim=(0, 1))  # [f]: tokens with σ(g) > 0 per neuron
    assert torch.equal(slots[1].target_.active, expected)
    assert 0 < expected.sum() < 3 * 10 * 160  # random init: neither all nor none active


def test_no_slot_and_declining_slot_change_nothing(make_config):
    model = Transformer(make_config(), seed=0)
    tokens = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        plain = model(tokens)
        attach_slots(model)
        counted = model(tokens)
    torch.testing.assert_close(plain, counted, rtol=0, atol=0)


def test_ungated_mlp_counts_the_pre_activation(make_config):
    model = Transformer(make_config(gated=False), seed=0)
    assert not hasattr(model.layers[0].mlp, "gate_proj")
    slots = attach_slots(model)
    captured = {}
    model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, out: captured.update(u=out.detach()))
    tokens = torch.randint(0, 100, (2, 8))
    loss_and_grads(model, tokens)
    assert torch.equal(slots[0].target_.active, (captured["u"] > 0).sum(dim=(0, 1)))
    assert slots[0].target_.tokens.item() == 2 * 7


def test_recompute_flag_is_false_outside_recomputation(make_config):
    seen = []
    model = Transformer(make_config(num_layers=1), seed=0, activation_checkpointing=True)
    # A pre-hook: recomputation may stop early, right after the last tensor backward needs.
    model.layers[0].mlp.register_forward_pre_hook(lambda *args: seen.append(in_recompute()))
    loss_and_grads(model, torch.randint(0, 100, (1, 6)))
    assert seen == [False, True]
    with torch.no_grad():  # no backward coming: checkpointing is skipped, nothing to recompute
        model(torch.randint(0, 100, (1, 6)))
    assert seen == [False, True, False]

"""Deterministic initialisation from a seed, and configuration errors."""

from __future__ import annotations

import pytest
import torch

from megasparse.config import ConfigError, config_from_dict
from megasparse.model import Transformer


def test_same_seed_same_model_different_seed_different(make_config):
    a = Transformer(make_config(), seed=7).state_dict()
    b = Transformer(make_config(), seed=7).state_dict()
    c = Transformer(make_config(), seed=8).state_dict()
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
        if not name.endswith("norm.weight"):
            assert not torch.equal(a[name], c[name]), name


def test_parameters_differ_between_layers_and_projections(make_config):
    model = Transformer(make_config(), seed=0)
    q0, q1 = model.layers[0].attn.q_proj.weight, model.layers[1].attn.q_proj.weight
    assert not torch.equal(q0, q1)
    assert not torch.equal(q0, model.layers[0].attn.k_proj.weight)


def test_init_does_not_depend_on_depth_or_reset(make_config):
    # Each parameter's draw depends only on (seed, name): a layer is the same whatever the
    # model around it, which keeps layouts (e.g. pipeline splits) comparable.
    two = Transformer(make_config(num_layers=2), seed=5)
    four = Transformer(make_config(num_layers=4), seed=5)
    for name, tensor in two.state_dict().items():
        assert torch.equal(tensor, four.state_dict()[name]), name
    before = {k: v.clone() for k, v in two.state_dict().items()}
    with torch.no_grad():
        for p in two.parameters():
            p.add_(torch.randn_like(p))
    two.reset_parameters(5)
    for name, tensor in two.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_meta_device_builds_shapes_only(make_config):
    model = Transformer(make_config(), device="meta")
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize(
    "model, message",
    [
        ({"hidden_size": 100, "head_dim": 16}, "not divisible by model.head_dim"),
        ({"activation": "gelu"}, "model.activation"),
        ({"hidden_size": 0}, "model.hidden_size"),
        ({"num_layer": 2}, "unknown key 'model.num_layer'"),
        ({"init_std": -0.1}, "model.init_std"),
    ],
)
def test_bad_model_configs_raise_clear_errors(model, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": model}, source="run.yaml")


def test_missing_vocab_size_is_reported(make_config):
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(make_config(vocab_size=None))

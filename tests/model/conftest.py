"""Shared helpers for the model tests: tiny configs built through the real config schema."""

from __future__ import annotations

from typing import Any

import pytest

from megasparse.config import ModelConfig, config_from_dict

TINY = dict(hidden_size=64, num_layers=2, head_dim=16, ffn_size=160, vocab_size=100)


def tiny_config(**overrides: Any) -> ModelConfig:
    """A tiny model section validated by the same code as a run config."""
    return config_from_dict({"model": {**TINY, **overrides}}).model


@pytest.fixture
def make_config():
    return tiny_config

"""Tiny model configs built through the real config schema (imported by the model tests and
their conftest; a module name of its own, since every test folder has a ``conftest``)."""

from __future__ import annotations

from typing import Any

from megasparse.config import ModelConfig, config_from_dict

TINY = dict(hidden_size=64, num_layers=2, head_dim=16, ffn_size=160, vocab_size=100)


def tiny_config(**overrides: Any) -> ModelConfig:
    """A tiny model section validated by the same code as a run config."""
    return config_from_dict({"model": {**TINY, **overrides}}).model

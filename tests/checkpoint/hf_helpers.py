"""Helpers for the Hugging Face conversion tests: tiny checkpoints of ours, the convert command."""

from __future__ import annotations

from pathlib import Path

import torch

from megasparse.checkpoint.weights_checkpoint import write_weights_checkpoint
from megasparse.cli.convert import main as convert_main
from megasparse.config import ModelConfig
from megasparse.model.transformer import Transformer

VOCAB = 512  # the tiny corpus tokenizer's vocabulary
TINY = dict(hidden_size=64, num_layers=2, ffn_size=160, head_dim=16, vocab_size=VOCAB, activation="relu")


def tiny_checkpoint(folder: Path, tokenizer: str | None = None, seed: int = 1, **overrides) -> Transformer:
    """A random tiny model of ours written as a checkpoint folder; returns the model."""
    config = ModelConfig(**{**TINY, **overrides})
    model = Transformer(config, seed=seed).eval()
    with torch.no_grad():  # norms away from 1, so a norm fold that went wrong shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
    run = {"data": {"tokenizer_model": tokenizer, "seq_length": 64}} if tokenizer else {}
    write_weights_checkpoint(folder, config, model.state_dict(), {"run": run})
    return model


def convert(*args: str) -> int:
    """``megasparse convert ARGS`` in this process; its exit status."""
    return convert_main([str(a) for a in args], prog="megasparse convert")


def tokens(batch: int = 2, seq: int = 24, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))  # [b, s]


def hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    remote = (folder / "modeling_minicpm.py").exists()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=remote).eval()
    with torch.no_grad():
        return model(ids).logits  # [b, s, V]


def within_gate(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """The --verify gate: max |Δ| ≤ 1e-4·max(1, std) and the same argmax everywhere."""
    limit = 1e-4 * max(1.0, float(ours.std()))
    return float((ours - theirs).abs().max()) <= limit and bool((ours.argmax(-1) == theirs.argmax(-1)).all())

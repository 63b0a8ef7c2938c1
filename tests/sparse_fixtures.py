"""Helpers for the sparsity-measurement tests: tiny models, model-consistent data, a real tiny run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from run_helpers import run_env

REPO = Path(__file__).resolve().parents[1]
VOCAB = 256


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core box run ~100× faster single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(activation: str = "relu", seed: int = 1, layers: int = 2):
    from megasparse.config import ModelConfig
    from megasparse.model.transformer import Transformer

    cfg = ModelConfig(
        hidden_size=64, num_layers=layers, ffn_size=160, head_dim=16, vocab_size=VOCAB, activation=activation
    )
    return Transformer(cfg, seed=seed).eval()


@torch.no_grad()
def greedy_batches(model, n: int, b: int = 2, s: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """Batches [b, s+1] continued greedily by the model from a random 4-token prefix.

    Every target is the dense model's own top choice, so dropping neurons can only move the
    model away from its data: the PPL ratio rises with the CETT value (on random text a random
    model's loss may just as well fall when perturbed).
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        toks = torch.randint(0, VOCAB, (b, 4), generator=g)
        while toks.shape[1] < s + 1:
            toks = torch.cat([toks, model(toks)[:, -1].argmax(-1, keepdim=True)], dim=1)
        out.append(toks)
    return out


_RUN: dict = {}


def trained_run(tmp_path_factory) -> dict:
    """A real 20-step training run of the tiny config (checkpoints at steps 10 and 20), built once."""
    if _RUN:
        return _RUN
    from tiny_data import build_tiny_corpus

    root = tmp_path_factory.mktemp("measure_run")
    build_tiny_corpus(root, train_docs=200, valid_docs=30, vocab_size=512)
    cfg = {
        "base": str(REPO / "configs" / "model" / "tiny.yaml"),
        "data": {
            "train": [str(root / "train_text_document")],
            "tokenizer_model": str(root / "tok.model"),
            "seq_length": 32,
        },
        "train": {
            "micro_batch_size": 2,
            "global_batch_size": 4,
            "steps": 20,
            "seed": 7,
            "precision": "fp32",
            "device": "cpu",
            "schedule": {"kind": "wsd", "warmup_steps": 4},
        },
        "checkpoint": {"dir": str(root / "ckpt"), "interval": 10, "keep_last": 5},
        "logging": {"interval": 10},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "megasparse.train", "--config", str(root / "run.yaml")],
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _RUN.update(
        root=root, ckpt=root / "ckpt", valid=str(root / "valid_text_document"), tokenizer=str(root / "tok.model")
    )
    return _RUN

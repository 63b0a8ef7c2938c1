"""Checks and set-up that run before any process group or model exists, so bad input fails fast."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from megasparse.config import ConfigError, RunConfig
from megasparse.data.indexed_dataset import dataset_exists
from megasparse.data.loader import parse_blend
from megasparse.training import console
from megasparse.training.data_checks import check_data_vocabulary
from megasparse.training.wandb_logger import require_wandb


def check_inputs(cfg: RunConfig) -> None:
    """Fails in seconds on missing input files (token files, tokenizer)."""
    if not cfg.data.train:
        raise ConfigError("data.train is empty; give a .bin/.idx prefix, e.g. data.train=[out/corpus_text_document]")
    for section in ("train", "valid"):
        prefixes, _ = parse_blend(getattr(cfg.data, section), f"data.{section}")
        for prefix in prefixes:
            if not dataset_exists(prefix):
                raise ConfigError(
                    f"data.{section}: {prefix}.bin/.idx not found; fix the prefix or create the "
                    "files with tools/preprocess_data.py"
                )
    if cfg.data.tokenizer_model and not Path(cfg.data.tokenizer_model).exists():
        raise ConfigError(
            f"data.tokenizer_model: {cfg.data.tokenizer_model} not found; train one with "
            "tools/train_tokenizer.py or fix the path"
        )
    check_data_vocabulary(cfg, warn=console.warn)
    require_wandb(cfg)


def resolve_device(cfg: RunConfig) -> torch.device:
    """The device of this rank: its local GPU (LOCAL_RANK) when CUDA is asked for or available."""
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def check_counter_impl(cfg: RunConfig, device: torch.device) -> None:
    """The fused Triton counters need a CUDA device, or Triton's CPU interpreter switched on."""
    if cfg.sparsity.counter_impl == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError(
            f"sparsity.counter_impl: 'triton' needs a CUDA device, but this run is on {device.type}; "
            "use 'auto' (the PyTorch reference off the GPU) or 'reference', or set TRITON_INTERPRET=1 "
            "to run the kernel in Triton's CPU interpreter"
        )


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators (the data order has its own seed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

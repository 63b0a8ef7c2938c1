"""A run's live CETT calibration replayed in one process, at one CETT value (no search).

The live calibration of a data-parallel run evaluates every CETT value on GLOBAL held-out batches:
batch i is the DP ranks' i-th held-out micro-batches side by side (sparsity/ppl_search.py). The
replay builds those batches from the run's config as the trainer does, loads the weights of the
checkpoint written at the calibration's step, and evaluates the logged CETT value once. A
calibration that read other weights (a stale or partial ZeRO-3 gather) or other batches gives
other PPL and activation ratios than the ones the run logged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megasparse.checkpoint import load_model
from megasparse.config import load_config
from megasparse.data.loader import build_datasets
from megasparse.data.tokenizer import load_tokenizer
from megasparse.sparsity.live_calibration import heldout_batches
from megasparse.sparsity.ppl_search import evaluate_cett


def global_heldout_batches(config: Path, dp_size: int) -> list[torch.Tensor]:
    """The run's held-out set as one process sees it: ``cett_batches`` tensors [mbs·dp, s+1]."""
    cfg = load_config(str(config), [])
    t = cfg.train
    eod = load_tokenizer(cfg.data.tokenizer_model, cfg.data.tokenizer_type).eod_id
    # The trainer's datasets: the same sample counts give the same shuffles.
    _, valid = build_datasets(cfg.data, t.seed, t.steps * t.global_batch_size, t.eval_steps * t.global_batch_size, eod)
    count = cfg.sparsity.cett_batches
    per_rank = [heldout_batches(valid, count, t.micro_batch_size, rank, dp_size) for rank in range(dp_size)]
    return [torch.cat(micro_batches) for micro_batches in zip(*per_rank)]  # DP ranks in rank order


def replay_calibration(checkpoint: Path, batches: list[torch.Tensor], cett: float) -> tuple[float, float]:
    """(PPL ratio, activation ratio) of the checkpoint's weights at ``cett`` on ``batches``."""
    model = load_model(checkpoint)
    evaluation = evaluate_cett(model, batches, cett)
    return evaluation.ppl_ratio, evaluation.activation_ratio

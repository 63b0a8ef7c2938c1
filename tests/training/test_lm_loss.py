"""CausalLMLoss with the chunked head + loss trains exactly like the full-logits loss (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from megasparse.config import ConfigError, config_from_dict
from megasparse.model.mup import mup_param_groups
from megasparse.model.transformer import Transformer
from megasparse.training.lm_loss import CausalLMLoss

VOCAB = 203  # padded to 256 rows: the padded rows take part in the softmax on both paths
TINY = dict(hidden_size=64, num_layers=2, head_dim=16, ffn_size=160, vocab_size=VOCAB)


def _train(chunk_tokens: int, tie_embeddings: bool, steps: int = 4) -> tuple[list[float], list[float], Transformer]:
    """A few AdamW steps (µP groups, as the trainer) on fixed random batches; returns losses per step."""
    cfg = config_from_dict({"model": {**TINY, "tie_embeddings": tie_embeddings}}).model
    model = Transformer(cfg, seed=3, device="cpu")
    loss_fn = CausalLMLoss(model, chunk_tokens=chunk_tokens)
    groups = mup_param_groups(model, cfg, weight_decay=0.1, lr=1e-3)
    opt = torch.optim.AdamW(groups, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses, eval_losses = [], []
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (3, 17), generator=gen)  # 3 × 16 = 48 predicted tokens
        loss = loss_fn(tokens)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():  # the evaluation path: loss only
            eval_losses.append(float(loss_fn(tokens)))
    return losses, eval_losses, model


@pytest.mark.parametrize("tie_embeddings", [True, False], ids=["tied", "untied"])
def test_chunked_loss_trains_like_full_logits(tie_embeddings):
    full, full_eval, full_model = _train(0, tie_embeddings)
    chunked, chunked_eval, chunked_model = _train(10, tie_embeddings)  # 48 tokens: chunks 10,10,10,10,8
    assert len(set(full)) == len(full)  # the model really trains: the loss moves every step
    for a, b in zip(full + full_eval, chunked + chunked_eval):
        assert abs(a - b) <= 1e-5 * abs(a)
    # Weights agree to round-off as a whole (element-wise, Adam turns a near-zero gradient's
    # round-off into a full-size step, so single entries may differ more).
    with torch.no_grad():
        for (name, p), q in zip(full_model.named_parameters(), chunked_model.parameters()):
            assert float((p - q).norm() / p.norm()) < 1e-5, name


def test_chunked_loss_is_accepted_in_every_layout():
    # The layouts themselves are compared with one process in tests/parallel (tp_checks, pp_checks).
    for parallel in ({"tensor": 2}, {"pipeline": 2}, {"tensor": 2, "pipeline": 2, "sequence_parallel": True}):
        train = {"loss_chunk_tokens": 512, "micro_batch_size": 1, "global_batch_size": 4}
        model = {"vocab_size": VOCAB, "num_layers": 2}
        config_from_dict({"train": train, "parallel": parallel, "model": model}).validate_layout(world_size=4)


def test_loss_chunk_tokens_must_not_be_negative():
    with pytest.raises(ConfigError, match="train.loss_chunk_tokens"):
        config_from_dict({"train": {"loss_chunk_tokens": -1}})


def test_fast_path_is_accepted_in_every_layout():
    # The layouts themselves are compared with one process in tests/parallel (pp_checks: PP2 and
    # TP2 × PP2 with SP) and tests/training/test_launchers.py (a PP2 run).
    train = {"fused_projections": True, "attention_bshd_layout": True, "fused_residual_norm": True}
    train.update(micro_batch_size=1, global_batch_size=4)
    model = {"vocab_size": VOCAB, "num_layers": 2}
    for parallel in ({"tensor": 2}, {"pipeline": 2}, {"tensor": 2, "pipeline": 2, "sequence_parallel": True}):
        config_from_dict({"train": train, "parallel": parallel, "model": model}).validate_layout(world_size=4)

"""Communication overlap does not change what training computes (two processes, deepspeed launcher).

* ``train.tp_comm_overlap``: a TP2+SP run with the overlapped column layers and one with the
  separate collectives give the same losses, evaluation losses and activation ratios.
* DeepSpeed's ``overlap_comm`` (set for ZeRO 1/2 by megasparse/training/deepspeed_config.py):
  DP2 runs (ZeRO-1 and ZeRO-2, two micro-steps per step) with it and with DeepSpeed's defaults
  restored through the ``deepspeed:`` section (no overlap, 5e8-element buckets) give the same
  losses.
"""

from __future__ import annotations

import pytest
from run_helpers import deepspeed_launcher, run_train, scalars, write_run_config

TAGS = ("train/loss", "eval/loss", "sparsity/activation_ratio")


def _run(tmp_path, corpus, name: str, train: dict, parallel: dict, deepspeed: dict | None = None) -> tuple[dict, str]:
    """(TensorBoard scalars, console output) of a 4-step run on 2 processes."""
    cfg = write_run_config(
        tmp_path / f"{name}.yaml",
        corpus,
        train={"steps": 4, "eval_interval": 2, "eval_steps": 1, **train},
        sparsity={"cett_interval": 0},
        parallel=parallel,
        checkpoint={"dir": None},
        logging={"dir": str(tmp_path / name / "tb"), "interval": 1},
        deepspeed=deepspeed or {},
    )
    proc = run_train(cfg, launcher=deepspeed_launcher(2))
    assert "step      4/4" in proc.stdout
    return scalars(tmp_path / name / "tb"), proc.stdout


def _assert_identical(a: dict, b: dict) -> None:
    for tag in TAGS:
        assert len(a[tag]) == len(b[tag]) > 0, tag
        # The same GEMMs and collectives on the same data, only started in another order:
        # the values agree bit for bit, not just to rounding.
        assert a[tag] == b[tag], f"{tag}: {a[tag]} vs {b[tag]}"


def test_tp2_sp_training_is_the_same_with_and_without_tp_comm_overlap(tiny_corpus, tmp_path):
    parallel = {"tensor": 2, "sequence_parallel": True, "zero_stage": 1}
    fast = {"fused_projections": True, "attention_bshd_layout": True, "fused_residual_norm": True}
    (on, on_log), (off, off_log) = (
        _run(tmp_path, tiny_corpus, name, {"tp_comm_overlap": name == "on", **fast}, parallel) for name in ("on", "off")
    )
    # 2 layers × (q, k, v, gate, up) column-parallel layers, as the trainer reports them.
    assert "10 column-parallel layers overlap their backward collectives" in on_log, on_log[-2000:]
    assert "column-parallel layers overlap" not in off_log
    _assert_identical(on, off)


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_dp2_training_is_the_same_with_and_without_deepspeed_overlap_comm(tiny_corpus, tmp_path, zero_stage):
    parallel = {"zero_stage": zero_stage}
    # Two micro-steps per step on each rank: ZeRO-1 reduces during the second one's backward only,
    # ZeRO-2 during both.
    train = {"global_batch_size": 8}
    on, on_log = _run(tmp_path, tiny_corpus, "on", train, parallel)
    # "off" is the DeepSpeed configuration from before: DeepSpeed's defaults for stages 1 and 2.
    before = {"zero_optimization": {"overlap_comm": False, "reduce_bucket_size": 500_000_000}}
    off, off_log = _run(tmp_path, tiny_corpus, "off", train, parallel, before)
    # The engine DeepSpeed built says whether it overlaps (read back from its ZeRO optimizer).
    assert f"ZeRO-{zero_stage} reduces gradients during the backward (overlap_comm" in on_log, on_log[-2000:]
    assert "overlap_comm" not in off_log
    _assert_identical(on, off)

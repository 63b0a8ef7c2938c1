"""Learning-rate schedules, the DeepSpeed config derivation and the checkpoint `latest` rules."""

from __future__ import annotations

import json
import math

import pytest

from megasparse.checkpoint import engine as ckpt
from megasparse.config import OptimizerConfig, ScheduleConfig, config_from_dict
from megasparse.training.deepspeed_config import REDUCE_BUCKET_ELEMENTS, build_deepspeed_config
from megasparse.training.schedule import lr_multiplier


def test_wsd_warmup_stable_then_paper_exponential_decay():
    f = lr_multiplier(
        ScheduleConfig(kind="wsd", warmup_steps=4, decay_start=10, decay_half_life=5),
        OptimizerConfig(lr=0.01, min_lr=0.001),
        total_steps=100,
    )
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == f(9) == 1.0
    assert f(10) == 1.0 and math.isclose(f(15), 0.5) and math.isclose(f(20), 0.25)
    assert f(1000) == pytest.approx(0.1)  # floored at min_lr / lr


def test_cosine_reaches_min_lr_at_the_end():
    f = lr_multiplier(ScheduleConfig(kind="cosine", warmup_steps=2), OptimizerConfig(lr=1.0, min_lr=0.1), 12)
    assert f(0) == 0.5 and f(1) == 1.0
    assert f(2) == pytest.approx(1.0) and f(7) == pytest.approx(0.55) and f(12) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(2, 12))


def test_deepspeed_config_follows_the_run_config():
    cfg = config_from_dict(
        {
            "train": {
                "micro_batch_size": 2,
                "global_batch_size": 16,
                "optimizer": {"lr": 0.02, "grad_clip": 0.5, "beta2": 0.98},
            },
            "parallel": {"zero_stage": 2},
            "deepspeed": {"zero_optimization": {"overlap_comm": False}},
        }
    )
    ds = build_deepspeed_config(cfg, world_size=4, bf16=True, on_cuda=False)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2  # 16 / (2 × 4)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"] == {"enabled": True}
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.98] and ds["optimizer"]["params"]["lr"] == 0.02
    # user keys merge into the derived sections instead of replacing them
    assert ds["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": REDUCE_BUCKET_ELEMENTS,
    }


@pytest.mark.parametrize(
    "zero_stage, pipeline, world_size, overlapped",
    [(0, 1, 2, False), (1, 1, 2, True), (2, 1, 2, True), (3, 1, 2, False), (1, 2, 2, False), (1, 1, 1, False)],
)
def test_data_parallel_reduction_overlaps_the_backward_where_deepspeed_honours_it(
    zero_stage, pipeline, world_size, overlapped
):
    """ZeRO 1/2 without PP and with DP > 1 get overlap_comm and bucketed contiguous gradients;
    stage 0 has no ZeRO reducer, stage 3 keeps DeepSpeed's own default (on), the pipeline engine
    turns it off, and one data-parallel rank has nothing to reduce (DeepSpeed's defaults stay)."""
    cfg = config_from_dict({"parallel": {"zero_stage": zero_stage, "pipeline": pipeline}})
    zero = build_deepspeed_config(cfg, world_size=world_size, bf16=False, on_cuda=False)["zero_optimization"]
    expected = {"stage": zero_stage}
    if overlapped:
        expected.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=REDUCE_BUCKET_ELEMENTS)
    assert zero == expected


def test_incomplete_checkpoint_never_becomes_the_resume_point(tmp_path):
    from megasparse.checkpoint import integrity, manifest

    done = tmp_path / "global_step10"
    done.mkdir()
    (done / ckpt.META_FILE).write_text(json.dumps({"step": 10}))
    integrity.seal(done)
    half = tmp_path / "global_step20"  # a save interrupted before its manifest was written
    half.mkdir()
    (half / ckpt.META_FILE).write_text(json.dumps({"step": 20}))
    (tmp_path / ckpt.LATEST_FILE).write_text("global_step10")
    warnings: list[str] = []
    assert ckpt.complete_tags(tmp_path) == ["global_step10"]
    assert integrity.choose_resume_point("auto", str(tmp_path), warnings.append) == (str(tmp_path), "global_step10")
    assert warnings == []
    # `latest` naming the incomplete folder: said once, naming the file, then the older one is used
    (tmp_path / ckpt.LATEST_FILE).write_text("global_step20")
    assert integrity.choose_resume_point("auto", str(tmp_path), warnings.append) == (str(tmp_path), "global_step10")
    assert f"{half / manifest.MANIFEST_FILE}: missing" in warnings[0] and len(warnings) == 2
    assert integrity.choose_resume_point("none", str(tmp_path), warnings.append) is None
    assert integrity.choose_resume_point("auto", str(tmp_path / "absent"), warnings.append) is None
    with pytest.raises(ckpt.CheckpointError, match="not a megasparse checkpoint"):
        integrity.choose_resume_point(str(tmp_path / "absent"), None, warnings.append)
    # named explicitly, an incomplete folder is refused rather than replaced by another
    with pytest.raises(ckpt.CheckpointError, match="megasparse_manifest.json: missing"):
        integrity.choose_resume_point(str(half), None, warnings.append)


def test_layout_mismatch_is_refused():
    meta = {"layout": {"world_size": 2, "tensor": 2, "pipeline": 1, "data": 1, "zero_stage": 1}}
    with pytest.raises(ckpt.CheckpointError, match="saved with tensor=2, this run has tensor=1"):
        ckpt.check_layout(meta, {"world_size": 2, "tensor": 1, "pipeline": 1, "data": 2, "zero_stage": 1}, "ck")


def test_optimizer_state_with_other_parameter_groups_is_refused():
    from megasparse.model.mup import GROUP_NAMES

    ckpt.check_optimizer_groups({"optimizer_groups": list(GROUP_NAMES)}, list(GROUP_NAMES), "ck")
    # Checkpoints from before the groups were recorded had one group per role.
    with pytest.raises(
        ckpt.CheckpointError, match=r"ck: its optimizer state has parameter groups \['embedding', 'norm', 'matrix'\]"
    ):
        ckpt.check_optimizer_groups({}, list(GROUP_NAMES), "ck")


def test_triton_counters_on_cpu_need_the_interpreter(monkeypatch):
    import torch

    from megasparse.config import ConfigError
    from megasparse.training.preflight import check_counter_impl

    cfg = config_from_dict({"sparsity": {"counter_impl": "triton"}})
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="sparsity.counter_impl: 'triton' needs a CUDA device"):
        check_counter_impl(cfg, torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_counter_impl(cfg, torch.device("cpu"))  # the interpreter runs it
    monkeypatch.delenv("TRITON_INTERPRET")
    check_counter_impl(config_from_dict({"sparsity": {"counter_impl": "auto"}}), torch.device("cpu"))

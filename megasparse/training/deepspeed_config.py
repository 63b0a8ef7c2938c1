"""The DeepSpeed config derived from a run config (users may pass extra keys through)."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from megasparse.config import RunConfig

# Gradient elements per data-parallel reduction bucket under ZeRO 1/2. DeepSpeed's default (5e8)
# puts every gradient of our 0.1–1.2B models into one or two buckets, so the reduction could only
# start when the backward is (nearly) over; 5e7 (100 MB in bf16, Megatron uses 4e7) gives a
# bucket to reduce every few layers while the backward goes on.
REDUCE_BUCKET_ELEMENTS = 50_000_000


def zero_optimization(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The ``zero_optimization`` section: the stage, and for ZeRO 1/2 the data-parallel gradient
    reduction overlapped with the backward.

    ``overlap_comm`` reduces each full bucket on a side stream while the backward computes the
    next gradients; ``contiguous_gradients`` copies gradients into the bucket as they are made
    (DeepSpeed's default, set so the pair is explicit). DeepSpeed honours ``overlap_comm`` in
    stages 1 and 2 (stage 1 reduces during the last micro-step's backward of each step, stage 2
    during every one); stage 3 already defaults to it, stage 0 reduces after the backward, and
    the pipeline engine turns it off (with a warning), so it is set only where it acts; with one
    data-parallel rank there is nothing to reduce, and DeepSpeed's defaults stay (the one-GPU
    configuration the speed measurements used). Any key can still be overridden in the run
    config's ``deepspeed:`` section.
    """
    stage = cfg.parallel.zero_stage
    section: dict[str, Any] = {"stage": stage}
    data_parallel = world_size // (cfg.parallel.tensor * cfg.parallel.pipeline)
    if stage in (1, 2) and cfg.parallel.pipeline == 1 and data_parallel > 1:
        section.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=REDUCE_BUCKET_ELEMENTS)
    return section


def merge_config(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, recursively for nested sections."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            merge_config(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def build_deepspeed_config(cfg: RunConfig, world_size: int, bf16: bool, on_cuda: bool) -> dict[str, Any]:
    t, o = cfg.train, cfg.train.optimizer
    adam = {
        "lr": o.lr,
        "betas": [o.beta1, o.beta2],
        "eps": o.eps,
        "weight_decay": o.weight_decay,
        # torch's AdamW needs no compiled DeepSpeed op; on CUDA its fused kernel is the fast path.
        "torch_adam": True,
    }
    if on_cuda:
        adam["fused"] = True
    ds = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accumulation_steps(world_size),
        "optimizer": {"type": "AdamW", "params": adam},
        "gradient_clipping": o.grad_clip,
        "zero_optimization": zero_optimization(cfg, world_size),
        # bf16 keeps fp32 master weights in the (ZeRO) optimizer.
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    return merge_config(ds, cfg.deepspeed)


def communication_overlap_line(engine: Any, model: nn.Module, dp_size: int) -> Optional[str]:
    """One console line saying which communication overlaps the backward, as the built engine
    and model actually do it (DeepSpeed may turn ``overlap_comm`` off, e.g. under PP); None if
    nothing does."""
    parts = []
    tp_layers = sum(1 for m in model.modules() if getattr(m, "comm_overlap", False))
    if tp_layers:
        parts.append(f"{tp_layers} column-parallel layers overlap their backward collectives (train.tp_comm_overlap)")
    if dp_size > 1 and getattr(engine.optimizer, "overlap_comm", False):
        bucket = engine.zero_reduce_bucket_size()
        parts.append(
            f"ZeRO-{engine.zero_optimization_stage()} reduces gradients during the backward "
            f"(overlap_comm, buckets of {bucket:.0e} elements)"
        )
    return "communication overlap: " + "; ".join(parts) if parts else None

"""The DeepSpeed config derived from a run config (users may pass extra keys through)."""

from __future__ import annotations

from typing import Any

from megasparse.config import RunConfig


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
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        # bf16 keeps fp32 master weights in the (ZeRO) optimizer.
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    return merge_config(ds, cfg.deepspeed)

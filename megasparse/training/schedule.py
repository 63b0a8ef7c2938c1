"""Learning-rate schedules as multipliers of each parameter group's base lr.

The multiplier is applied through ``torch.optim.lr_scheduler.LambdaLR``, so the µP groups keep
their relative rates (matrices at lr ÷ scale_width) and DeepSpeed checkpoints the schedule.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from megasparse.config import OptimizerConfig, ScheduleConfig


def lr_multiplier(schedule: ScheduleConfig, optimizer: OptimizerConfig, total_steps: int) -> Callable[[int], float]:
    """Returns f(step) → multiplier of the peak lr, for steps 0, 1, 2, … (step = updates done)."""
    floor = optimizer.min_lr / optimizer.lr
    warmup = schedule.warmup_steps

    def warm(step: int) -> float | None:
        return (step + 1) / warmup if step < warmup else None

    if schedule.kind == "constant":
        return lambda step: warm(step) or 1.0

    if schedule.kind == "wsd":
        # Warmup, stable, then the paper's exponential decay: lr · 0.5^((step − decay_start) / half_life).
        def wsd(step: int) -> float:
            w = warm(step)
            if w is not None:
                return w
            if schedule.decay_start is None or step < schedule.decay_start:
                return 1.0
            return max(floor, 0.5 ** ((step - schedule.decay_start) / schedule.decay_half_life))

        return wsd

    def cosine(step: int) -> float:
        w = warm(step)
        if w is not None:
            return w
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, opt_cfg: OptimizerConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(schedule, opt_cfg, total_steps))

"""NaN/Inf loss or gradients: stop the run, or skip a bounded number of steps (``train.nonfinite``).

A step is non-finite when its loss (averaged over the data-parallel ranks, so every rank sees
the same value) is NaN/Inf, or when DeepSpeed's overflow check dropped its update (ZeRO and the
bf16 optimizer check the gradients and do not step the optimizer or the LR schedule then).

* ``stop``: the run ends at that step with exit status 4 and one line; nothing is saved, so the
  last checkpoint (written before the fault) stays the one to resume from.
* ``skip``: the step's update is dropped (DeepSpeed's own skip), its activation counts are
  discarded (they would mix a broken forward pass into the window), ``skipped_steps`` grows, and
  training goes on; more than ``train.max_skipped_steps`` skipped steps in a row stop the run as
  above. The step and token counters still advance (the data was read, so resuming stays exact)
  while the LR schedule, as DeepSpeed keeps it, advances only with applied updates.

If DeepSpeed applied an update despite a non-finite loss (ZeRO stage 0 does not check gradients)
the weights may be broken, so the run stops in either mode.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.distributed as dist

from megasparse.sparsity.counters import ActivationCounters


class NonFiniteError(RuntimeError):
    """The run stops on a NaN/Inf; every rank raises it at the same step with the same message."""

    agreed_by_every_rank = True


class NonFiniteGuard:
    """Wraps each optimizer step: :meth:`before_step`, the step, then :meth:`after_step`."""

    def __init__(self, mode: str, max_skipped: int, counters: ActivationCounters, warn: Callable[[str], None]):
        self.mode = mode
        self.max_skipped = max_skipped
        self.counters = counters
        self.warn = warn
        self.in_a_row = 0
        self._ds_skipped_before = 0
        self._counts: Optional[tuple] = None

    def before_step(self, engine) -> None:
        self._ds_skipped_before = int(getattr(engine, "skipped_steps", 0))
        if self.mode == "skip":  # a copy of the window's counts, to drop a bad step's again
            c = self.counters
            self._counts = (c.active.clone(), c.above_threshold.clone(), c.tokens.clone())

    def after_step(self, engine, loss: float, step: int, last_checkpoint: Optional[str]) -> bool:
        """True when the step was skipped; raises NonFiniteError when the run must stop."""
        ds_skipped = int(getattr(engine, "skipped_steps", 0)) > self._ds_skipped_before
        finite_loss = math.isfinite(loss)
        if finite_loss and not ds_skipped:
            self.in_a_row = 0
            return False
        what = f"loss {loss}" if not finite_loss else "non-finite gradients"
        if not ds_skipped:
            what += ", and DeepSpeed applied the update (ZeRO stage 0 does not check gradients)"
        kept = f"the last checkpoint {last_checkpoint} is kept" if last_checkpoint else "no checkpoint was written"
        if self.mode == "stop" or not ds_skipped:
            raise NonFiniteError(
                f"step {step}: {what}; stopped with nothing saved ({kept}). Lower train.optimizer.lr, check "
                "the data, or set train.nonfinite=skip to skip such steps"
            )
        self.in_a_row += 1
        if self.in_a_row > self.max_skipped:
            raise NonFiniteError(
                f"step {step}: {what}, {self.in_a_row} steps in a row skipped (train.max_skipped_steps="
                f"{self.max_skipped}); stopped with nothing saved ({kept}). Lower train.optimizer.lr or check the data"
            )
        active, above, tokens = self._counts
        self.counters.active.copy_(active)
        self.counters.above_threshold.copy_(above)
        self.counters.tokens.copy_(tokens)
        self.warn(f"step {step}: {what}; update skipped ({self.in_a_row} in a row, train.nonfinite=skip)")
        return True


def check_weights_finite(module: torch.nn.Module, step: int, last_checkpoint: Optional[str]) -> None:
    """Collective, before a save: refuses to save (and to end with status 0) weights holding
    NaN/Inf on any rank, naming the first such parameter."""
    bad = next((name for name, p in module.named_parameters() if not bool(torch.isfinite(p.detach()).all())), None)
    found = [bad]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, bad)
    first = next((name for name in found if name), None)
    if first:
        kept = f"the last checkpoint {last_checkpoint} is kept" if last_checkpoint else "no checkpoint was written"
        raise NonFiniteError(f"step {step}: parameter {first} holds NaN/Inf; not saved ({kept})")

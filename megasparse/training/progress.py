"""Where a run stands (saved in checkpoints) and the throughput of the current logging window."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class Progress:
    """Optimizer steps done and data consumed; a checkpoint's client state."""

    step: int = 0
    consumed_samples: int = 0
    consumed_tokens: int = 0
    # Steps whose update was dropped for NaN/Inf (train.nonfinite=skip, or DeepSpeed's overflow
    # check); they count in `step` and the tokens above, as their data was read.
    skipped_steps: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Window:
    """Throughput accumulators of one logging window."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    tokens: int = 0

    def reset(self) -> None:
        self.start, self.steps, self.tokens = time.perf_counter(), 0, 0

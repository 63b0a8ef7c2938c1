"""Preemption signals: SIGTERM / SIGUSR1 (SLURM) ask for a checkpoint at the next step boundary."""

from __future__ import annotations

import signal
from typing import Optional


class StopSignal:
    """Records the first stop signal; the trainer agrees on it over all ranks, saves and exits."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

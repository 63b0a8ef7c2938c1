"""A watchdog thread per rank: names the rank and step that stopped progressing, then ends the job.

A rank that hangs (stopped, swapped out, stuck in a driver) leaves the others waiting silently in
their next collective until its timeout. So each rank's thread
* publishes a heartbeat (a counter, the step and the phase the main thread is in) every
  ``interval`` seconds in the job's rendezvous store, over a connection of its own;
* watches its own main thread: when it has not moved for ``collective_timeout_s`` minus one
  interval (so the report comes just before the collectives themselves would time out), it
  reads the others' heartbeats, prints one line naming the rank(s) that stopped responding (a
  heartbeat that did not change for 3 intervals; the store itself not answering means rank 0,
  which hosts it) or, when all are alive, the rank(s) furthest behind, and exits the process
  with status 5 (training/exit_codes.py). The launcher then ends the other ranks.

Staleness is measured by each reader's own clock (when it last saw a counter change), so hosts
need no synchronised clocks.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from datetime import timedelta
from typing import Optional

import torch.distributed as dist

from megasparse.training import exit_codes

KEY = "megasparse/watchdog/rank{}"


class Watchdog:
    """Started by the trainer when there is more than one rank; :meth:`progress` marks a phase."""

    def __init__(self, rank: int, world: int, timeout_s: float, prog: str = "megasparse.train"):
        self.rank, self.world, self.timeout_s, self.prog = rank, world, float(timeout_s), prog
        self.interval = max(0.5, min(5.0, self.timeout_s / 10))
        self.limit = self.timeout_s - self.interval
        self.step, self.phase = 0, "start"
        self._moved = time.monotonic()
        self._beat = 0
        self._seen: dict[int, tuple[Optional[list], float]] = {}  # rank -> (last heartbeat, when it changed)
        self._store_silent_since: Optional[float] = None
        self._stop = threading.Event()
        self._store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=self.interval * 2),
            wait_for_workers=False,
        )
        self._thread = threading.Thread(target=self._run, name="megasparse-watchdog", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # also when an error ends the run before fit() closes it

    def progress(self, step: int, phase: str) -> None:
        """The main thread moved on: now at ``step``, doing ``phase``."""
        self.step, self.phase = step, phase
        self._moved = time.monotonic()

    def close(self) -> None:
        """Stops the thread and waits for it: a thread still inside a store call when the
        interpreter exits makes the process abort ("terminate called without an active exception")."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=3 * self.interval)

    # ------------------------------------------------------------------------------------
    def _run(self) -> None:
        self._publish_and_read()  # at once: a rank that hangs in its first steps is seen once
        while not self._stop.wait(self.interval):
            self._publish_and_read()
            if time.monotonic() - self._moved > self.limit and not self._stop.is_set():
                self._report_and_exit()

    def _publish_and_read(self) -> None:
        self._beat += 1
        now = time.monotonic()
        try:
            self._store.set(KEY.format(self.rank), json.dumps([self._beat, self.step, self.phase]))
            keys = [KEY.format(r) for r in range(self.world)]
            present = [r for r, k in enumerate(keys) if self._store.check([k])]
            values = self._store.multi_get([keys[r] for r in present]) if present else []
        except (RuntimeError, dist.DistStoreError):  # rank 0, which hosts the store, does not answer
            self._store_silent_since = self._store_silent_since or now
            return
        self._store_silent_since = None
        for r, raw in zip(present, values):
            beat = json.loads(raw)
            last, changed = self._seen.get(r, (None, now))
            self._seen[r] = (beat, now if last is None or beat[0] != last[0] else changed)

    def _culprits(self) -> str:
        now = time.monotonic()
        stale_after = 3 * self.interval
        if self._store_silent_since is not None and now - self._store_silent_since > stale_after:
            silent_s = now - self._store_silent_since
            return f"rank 0 stopped responding (its rendezvous store has not answered for {silent_s:.0f} s)"
        silent = []
        for r in range(self.world):
            if r == self.rank:
                continue
            beat, changed = self._seen.get(r, (None, now))
            if beat is None or now - changed > stale_after:
                where = f"last seen at step {beat[1]} ({beat[2]})" if beat else "never seen"
                silent.append(f"rank {r} stopped responding (no heartbeat for {now - changed:.0f} s; {where})")
        if silent:
            return "; ".join(silent)
        alive = {r: b for r, (b, _) in self._seen.items() if b is not None}
        if not alive:
            return "no heartbeat of the other ranks was seen"
        lowest = min(b[1] for b in alive.values())
        behind = [f"rank {r} at step {b[1]} ({b[2]})" for r, b in sorted(alive.items()) if b[1] == lowest]
        return "every rank answers; furthest behind: " + ", ".join(behind)

    def _report_and_exit(self) -> None:
        waited = time.monotonic() - self._moved
        message = (
            f"rank {self.rank}: no progress for {waited:.0f} s at step {self.step} ({self.phase}); "
            f"{self._culprits()}. Stopping the job (train.collective_timeout_s={self.timeout_s:g}); "
            "resume from the last checkpoint once the cause is fixed"
        )
        print(f"{self.prog}: error: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(exit_codes.HUNG_RANK)


class _NoWatchdog:
    """One process: nobody to wait for."""

    def progress(self, step: int, phase: str) -> None:
        pass

    def close(self) -> None:
        pass


def start_watchdog(rank: int, world: int, timeout_s: float) -> "Watchdog | _NoWatchdog":
    return Watchdog(rank, world, timeout_s) if world > 1 else _NoWatchdog()

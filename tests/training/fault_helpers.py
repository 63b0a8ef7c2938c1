"""Running a 2-rank training under the real deepspeed launcher while timing what it prints.

``timed_run`` records when each output line arrived, so a test can measure the seconds from a
fault (a log line, a signal) to the exit of the whole job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from run_helpers import REPO, deepspeed_launcher, run_env


@dataclass
class TimedRun:
    returncode: int
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    ended: float = 0.0  # seconds since start

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def first(self, text: str) -> float:
        """When the first line containing ``text`` arrived."""
        for t, line in self.lines:
            if text in line:
                return t
        raise AssertionError(f"no line with {text!r} in:\n{self.output[-4000:]}")

    def errors(self) -> list[str]:
        return [line.strip() for _, line in self.lines if "error:" in line]


def train_command(config: Path, *extra: str, nproc: int = 2) -> list[str]:
    return deepspeed_launcher(nproc) + ["megasparse.train", "--config", str(config), *extra]


def timed_run(
    cmd: list[str],
    on_line: Optional[Callable[[str, subprocess.Popen], None]] = None,
    timeout: float = 600,
    prefix: Optional[list[str]] = None,
) -> TimedRun:
    """Runs ``cmd`` (stdout and stderr together), calling ``on_line(line, proc)`` for every line."""
    start = time.monotonic()
    proc = subprocess.Popen(
        (prefix or []) + cmd,
        cwd=REPO,
        env=run_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    run = TimedRun(returncode=-1)
    try:
        for line in proc.stdout:
            run.lines.append((time.monotonic() - start, line))
            if on_line is not None:
                on_line(line, proc)
        run.returncode = proc.wait()
    finally:
        killer.cancel()
    run.ended = time.monotonic() - start
    return run


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


def rank_pid(session: int, rank: int) -> Optional[int]:
    """The PID of training rank ``rank`` among the processes of a launcher's session."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ProcessLookupError):
            continue
        if b"megasparse.train" in argv and f"--local_rank={rank}".encode() in argv:
            return int(entry.name)
    return None

"""Start a training launch in the background, signal one of its processes, time how it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import psutil
from run_helpers import REPO, run_env


class Launch:
    """A launch whose output goes to ``log``; its processes are those whose command line names
    the run config (the launcher, launch.py and the ranks, on every emulated node)."""

    def __init__(self, cmd: list[str], config: Path, log: Path, env: dict | None = None):
        self.config, self.log = str(config), log
        self.out = log.open("w")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env or run_env(), stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 400) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"never saw {needle!r} (rc {self.proc.poll()}):\n{self.text()[-4000:]}")
            time.sleep(0.2)

    def processes(self, match: Callable[[list[str]], bool] = lambda argv: True) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            argv = p.info["cmdline"] or []
            if p.pid != os.getpid() and self.config in argv and match(argv):
                found.append(p)
        return found

    def signal_and_time(self, pids: list[int], sig: int, timeout: float = 120) -> float:
        """Sends ``sig`` to ``pids``; seconds until no process of the launch is left."""
        assert pids, "nothing to signal"
        start = time.monotonic()
        for pid in pids:
            os.kill(pid, sig)
        while self.processes() or self.proc.poll() is None:
            if time.monotonic() - start > timeout:
                self.kill()
                raise AssertionError(f"processes left {timeout} s after the signal:\n{self.text()[-4000:]}")
            time.sleep(0.1)
        self.out.close()
        return time.monotonic() - start

    def kill(self) -> None:
        for p in self.processes():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.out.close()


def is_launch_py(argv: list[str]) -> bool:
    return "deepspeed.launcher.launch" in argv


def is_rank(local_rank: int) -> Callable[[list[str]], bool]:
    return lambda argv: f"--local_rank={local_rank}" in argv and not is_launch_py(argv)

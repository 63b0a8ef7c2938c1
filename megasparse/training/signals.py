"""Stop requests: a checkpoint at the next step boundary, then exit with :data:`EXIT_STOPPED`.

A run stops early, cleanly, on any of:
* SIGTERM or SIGUSR1 to a rank (SLURM's preemption and ``--signal=USR1@T``, ``scancel
  --signal``, ``kill``, or the deepspeed ``launch.py`` forwarding its own SIGTERM);
* the loss of a launcher process above the rank: the single-node ``deepspeed`` runner has no
  signal handler, so a SIGTERM (or SIGKILL) to it ends it alone; its ranks notice that it is gone;
  the same holds for ``launch.py`` and for the ssh session pdsh opened to a node;
* a stop file, ``<checkpoint.dir>/STOP``, for launches that signals cannot reach (the ranks
  pdsh starts under an sbatch script are outside SLURM's job steps; the script's trap touches it).

The trainer agrees on the request over all ranks (any rank suffices), writes a checkpoint,
and every rank exits with EXIT_STOPPED, so batch scripts can tell "stopped early, resumable"
(requeue) from "finished" (0), "bad input" (2) and "failed" (1).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional

# sysexits.h EX_TEMPFAIL: a temporary failure; the user is invited to retry (resume).
EXIT_STOPPED = 75

STOP_FILE_NAME = "STOP"


def _proc_stat(pid: int) -> Optional[tuple[int, int]]:
    """(parent pid, start time in clock ticks) of a live process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (2nd field) is in parentheses and may hold spaces: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its parent has not reaped it yet
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def launcher_kind(argv: list[str]) -> Optional[str]:
    """What a process above a rank is: the ``deepspeed`` command ("runner"), its per-node
    ``launch.py`` ("launch"), an sshd session ("ssh", how pdsh starts launch.py) or None."""
    if argv and argv[0].startswith("sshd: ") and "listener" not in argv[0]:
        return "ssh"
    # The interpreter, its options (-u, -m) and then the launcher's script or module.
    for arg in argv[:5]:
        if arg.startswith("deepspeed.launcher.launch"):
            return "launch"
        if os.path.basename(arg) in ("deepspeed", "ds") or arg.startswith("deepspeed.launcher.runner"):
            return "runner"
    return None


class LauncherWatch:
    """The launcher processes above this one, noted at start-up, and whether one has gone."""

    def __init__(self, pid: Optional[int] = None) -> None:
        self.watched: list[tuple[int, int, str]] = []  # (pid, start time, what)
        pid = os.getpid() if pid is None else pid
        below_launch = False
        stat, seen = _proc_stat(pid), set()
        while stat is not None and stat[0] > 1 and stat[0] not in seen:
            parent = stat[0]
            seen.add(parent)
            stat = _proc_stat(parent)
            argv = _cmdline(parent)
            kind = launcher_kind(argv)
            # An ssh session counts only as the one pdsh opened for launch.py: a user's own login
            # (a nohup'd run, a single-node deepspeed runner started over ssh) may end freely.
            if stat is None or kind is None or (kind == "ssh" and not below_launch):
                continue
            self.watched.append((parent, stat[1], " ".join(argv)[:80]))
            below_launch = below_launch or kind == "launch"
            if kind in ("runner", "ssh"):  # the top of the job on this node
                break

    def gone(self) -> Optional[str]:
        """A description of the first watched launcher process that has exited, else None."""
        for pid, started, what in self.watched:
            now = _proc_stat(pid)
            if now is None or now[1] != started:  # exited (or its pid was reused)
                return f"launcher process {pid} ({what}) exited"
        return None


class StopSignal:
    """Records the first stop request; the trainer agrees on it over all ranks, saves and exits."""

    def __init__(self, checkpoint_dir: Optional[str] = None) -> None:
        self.received: Optional[int] = None
        self.training = False  # until training_started(): a signal ends the process (see _handle)
        self.launchers = LauncherWatch()
        self.stop_file = Path(checkpoint_dir) / STOP_FILE_NAME if checkpoint_dir else None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if not self.training:
            # Start-up: nothing trained to save. Unwind (finally blocks run, so a lock such as
            # DeepSpeed's op-build lock is released; being killed there leaves it behind and
            # every later launch on the machine waits on it) and exit as the signal would.
            raise SystemExit(128 + signum)
        if self.received is None:
            self.received = signum

    def training_started(self) -> None:
        """From now on a signal asks for a checkpoint at the next step boundary."""
        self.training = True

    def reason(self) -> Optional[str]:
        """Why this rank wants to stop now, or None. Cheap enough for every step (a few stat calls)."""
        if self.received is not None:
            return f"signal {signal.Signals(self.received).name}"
        gone = self.launchers.gone()
        if gone is not None:
            return gone
        if self.stop_file is not None and self.stop_file.exists():
            return f"stop file {self.stop_file}"
        return None

    def ignore_further(self) -> None:
        """Once the run has stopped with its checkpoint: a launcher that takes the first rank's
        EXIT_STOPPED for a failure (srun --kill-on-bad-exit, launch.py) signals the others; they
        must still exit with EXIT_STOPPED, not die of that signal while shutting down."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)

    def consume_stop_file(self) -> None:
        """Rank 0, once the checkpoint is written: the request is honoured, so a resumed run goes on."""
        if self.stop_file is not None:
            try:
                self.stop_file.unlink()
            except FileNotFoundError:
                pass

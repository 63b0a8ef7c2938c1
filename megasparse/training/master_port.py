"""A MASTER_PORT that another process already listens on: replaced, or refused in one line.

Rank 0 hosts the rendezvous (torch's TCPStore) on MASTER_PORT. Two jobs on one host with the
launcher's default port (deepspeed: 29500) collide, and torch reports it as an EADDRINUSE
traceback from every rank. Before connecting, rank 0 now tests the port:

* all ranks on this host (a single-node launch): rank 0 picks a free port and hands it to its
  local peers through a small file keyed by their common parent process (the launcher), so
  the run starts anyway and says which port it took;
* ranks on several nodes: the remote ranks cannot be told, so rank 0 refuses in one line that
  names the port and how to choose another.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional

from megasparse.config import ConfigError

# How long local ranks wait for rank 0's choice: rank 0 may still be importing torch and DeepSpeed.
HANDOFF_TIMEOUT_S = 300.0


def port_in_use(port: int) -> bool:
    """True when another socket listens on the port (TIME_WAIT leftovers do not count, as the
    store also binds with SO_REUSEADDR)."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, port))
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE; other errors (no IPv6) say nothing about the port
                return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def all_ranks_on_this_host(world_size: int) -> bool:
    """What the launcher says: deepspeed's launch.py (LOCAL_SIZE), torchrun (LOCAL_WORLD_SIZE),
    srun (SLURM_NNODES), mpirun (OMPI_COMM_WORLD_LOCAL_SIZE)."""
    env = os.environ
    for name in ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        if env.get(name, "").isdigit():
            return int(env[name]) == world_size
    if env.get("SLURM_NNODES", "").isdigit() and "SLURM_PROCID" in env:
        return int(env["SLURM_NNODES"]) == 1
    return world_size == 1


def _handoff_file(port: int) -> Path:
    """Unique to this launch: the ranks' common parent (the launcher) and its start time."""
    parent = os.getppid()
    try:
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return Path(tempfile.gettempdir()) / f"megasparse-port-{os.getuid()}-{parent}-{started}-{port}"


def settle_master_port(rank: int, world_size: int, say=print) -> Optional[Path]:
    """Makes MASTER_PORT usable before the rendezvous (see the module docstring). Returns the
    hand-off file rank 0 wrote, for :func:`forget_handoff` once everyone has connected."""
    port = int(os.environ.get("MASTER_PORT", "0") or 0)
    if port <= 0:
        return None
    if not all_ranks_on_this_host(world_size):
        if rank == 0 and port_in_use(port):
            host = socket.gethostname()
            raise ConfigError(
                f"MASTER_PORT {port} is already in use on {host} (another job?); start the launch with a free "
                "port: deepspeed --master_port P, or export MASTER_PORT=P for srun/mpirun"
            )
        return None
    if world_size == 1:
        if port_in_use(port):
            os.environ["MASTER_PORT"] = str(free_port())
            say(f"MASTER_PORT {port} is in use on this host; using {os.environ['MASTER_PORT']} instead")
        return None
    handoff = _handoff_file(port)
    if rank == 0:
        chosen = free_port() if port_in_use(port) else port
        tmp = handoff.with_suffix(".tmp")
        tmp.write_text(str(chosen))
        tmp.replace(handoff)  # atomic: peers never read half a number
        if chosen != port:
            say(f"MASTER_PORT {port} is in use on this host (another job?); using {chosen} instead")
    else:
        deadline = time.monotonic() + HANDOFF_TIMEOUT_S
        while not handoff.exists():
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"rank {rank}: rank 0 did not announce the master port within {HANDOFF_TIMEOUT_S:.0f} s "
                    f"({handoff} missing); did rank 0 start?"
                )
            time.sleep(0.05)
        chosen = int(handoff.read_text())
    os.environ["MASTER_PORT"] = str(chosen)
    return handoff if rank == 0 else None


def forget_handoff(handoff: Optional[Path]) -> None:
    """Rank 0, after every rank connected (so every peer has read it)."""
    if handoff is not None:
        try:
            handoff.unlink()
        except FileNotFoundError:
            pass

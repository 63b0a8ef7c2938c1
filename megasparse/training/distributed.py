"""Rank discovery and process-group start-up for every launcher users have.

Supported launchers, in the order they are recognised:
* ``deepspeed`` / ``torchrun``: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set.
* ``srun`` (SLURM): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the master is the first host of
  SLURM_JOB_NODELIST (or MASTER_ADDR when the batch script exports it).
* ``mpirun`` (OpenMPI): OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}; the master address is agreed
  through mpi4py (rank 0's host name broadcast to all).
* nothing: one process, world size 1.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    launcher: str


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
        return out[0] if out else "127.0.0.1"
    except (OSError, subprocess.SubprocessError):
        # A single plain host name needs no expansion.
        return nodelist.split(",")[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def discover_ranks() -> RankInfo:
    """Fills RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from whichever launcher started us."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        info = RankInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "env")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        info = RankInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "slurm")
        env.setdefault("MASTER_ADDR", _first_slurm_host())
        # Derive a job-specific port so two jobs on one node don't collide.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    elif "OMPI_COMM_WORLD_RANK" in env:
        info = RankInfo(
            int(env["OMPI_COMM_WORLD_RANK"]),
            int(env["OMPI_COMM_WORLD_SIZE"]),
            int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)),
            "mpi",
        )
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
            addr, port = comm.bcast((socket.gethostname(), _free_port()) if info.rank == 0 else None, root=0)
            env.setdefault("MASTER_ADDR", addr)
            env.setdefault("MASTER_PORT", str(port))
    else:
        info = RankInfo(0, 1, 0, "single")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = str(info.rank), str(info.world_size), str(info.local_rank)
    return info


def init_distributed(device: torch.device, timeout_s: float = 600.0) -> RankInfo:
    """Starts the default process group (NCCL on GPU, gloo on CPU) through DeepSpeed.

    The timeout (``train.collective_timeout_s``) bounds how long a collective waits for a dead
    rank, so a lost node makes the job fail instead of hanging forever. It applies to every
    process group: the default one, ours (parallel/groups.py passes it) and the ones DeepSpeed
    creates itself without a timeout (the pipeline engine's grid), which take torch's module
    default: that default is set to the same value here (otherwise 30 min on gloo).
    """
    info = discover_ranks()
    timeout = timedelta(seconds=timeout_s)
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    distributed_c10d.default_pg_nccl_timeout = timeout
    if dist.is_initialized():
        return info
    import deepspeed

    from megasparse.training.master_port import forget_handoff, settle_master_port

    # A port another job holds: replaced on one host, refused in one line across nodes.
    handoff = settle_master_port(info.rank, info.world_size)

    backend = "nccl" if device.type == "cuda" else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
    release_cpu_allreduce_buffer()  # on gloo its barrier shows that every rank connected
    if info.world_size > 1 and dist.get_backend() != "gloo":
        dist.barrier()  # every rank connected, hence read the port hand-off
    forget_handoff(handoff)
    return info


def release_cpu_allreduce_buffer() -> None:
    """Removes the name of DeepSpeed's CPU shared-memory all-reduce buffer once all ranks hold it.

    On the CPU, DeepSpeed's comm start-up creates one 66 MB POSIX shared-memory segment per rank
    (``/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}``) that every peer maps,
    and never unlinks it: each run leaks world_size x 66 MB of RAM-backed tmpfs until reboot.
    Once every rank has mapped its peers' segments (the barrier), unlinking the name is safe:
    the mappings live on until the processes exit, and then the memory is returned.
    """
    if not dist.is_initialized() or dist.get_backend() != "gloo":
        return
    dist.barrier()
    name = (
        f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
        f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}"
    )
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:  # no shm op built (no compiler) or not Linux: nothing was leaked
        pass


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

"""Where every rank runs: host, local rank and node rank, checked once at start-up.

On a cluster a wrong placement is silent and expensive: two ranks with the same local rank on
one host share a GPU, and a tensor-parallel group split over two nodes sends its per-layer
all-reduces over the network. Rank 0 gathers every rank's view, checks it against what the
launcher claimed and against the TP groups, prints one banner line, and keeps the whole table
in ``placement.json`` beside the TensorBoard logs.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Callable, Optional

import torch.distributed as dist

# The node index each launcher exports: deepspeed's launch.py (CROSS_RANK) and srun (SLURM_NODEID).
# mpirun exports none that means "node index", so there the index is derived from host names only.
NODE_RANK_VARIABLES = ("CROSS_RANK", "SLURM_NODEID")


def launcher_node_rank() -> Optional[int]:
    """The node index this process's launcher exported, if it exports one."""
    for name in NODE_RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return None


def this_rank(rank: int, local_rank: int) -> dict:
    return {
        "rank": rank,
        "local_rank": local_rank,
        "host": socket.gethostname(),
        "launcher_node_rank": launcher_node_rank(),
    }


def gather_placement(rank: int, local_rank: int) -> list[dict]:
    """Every rank's :func:`this_rank`, in rank order (collective over the world)."""
    mine = this_rank(rank, local_rank)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def summarize_placement(ranks: list[dict], tensor_groups: list[list[int]]) -> dict:
    """Node ranks derived from host names (in order of first appearance, as launchers number
    nodes), and the problems found: duplicate local ranks on a host, a launcher node index that
    disagrees with the host names, tensor-parallel groups that span nodes."""
    hosts: list[str] = []
    for r in ranks:
        if r["host"] not in hosts:
            hosts.append(r["host"])
    problems = []
    for r in ranks:
        r["node_rank"] = hosts.index(r["host"])
        if r["launcher_node_rank"] is not None and r["launcher_node_rank"] != r["node_rank"]:
            problems.append(
                f"rank {r['rank']} runs on {r['host']} (node {r['node_rank']} by host name) but its launcher "
                f"says node {r['launcher_node_rank']}"
            )
    for host in hosts:
        local = sorted(r["local_rank"] for r in ranks if r["host"] == host)
        if local != list(range(len(local))):
            problems.append(f"host {host} has local ranks {local}, expected 0..{len(local) - 1}")
    split = [g for g in tensor_groups if len({ranks[i]["host"] for i in g}) > 1]
    if split:
        problems.append(
            f"tensor-parallel groups {split} span nodes; use parallel.tensor ≤ processes per node "
            "so that TP traffic stays inside a node"
        )
    return {
        "nodes": {host: [r["rank"] for r in ranks if r["host"] == host] for host in hosts},
        "tensor_groups": tensor_groups,
        "tensor_groups_within_nodes": not split,
        "ranks": ranks,
        "problems": problems,
    }


def placement_line(summary: dict) -> str:
    """One banner line, e.g. ``4 ranks on 2 nodes (node1: 0-1, node2: 2-3); TP groups within nodes``."""

    def span(ranks: list[int]) -> str:
        contiguous = ranks == list(range(ranks[0], ranks[-1] + 1))
        return f"{ranks[0]}-{ranks[-1]}" if contiguous and len(ranks) > 1 else ",".join(map(str, ranks))

    nodes = summary["nodes"]
    n_ranks = sum(len(r) for r in nodes.values())
    where = ", ".join(f"{host}: {span(r)}" for host, r in nodes.items())
    line = f"{n_ranks} rank{'s' if n_ranks > 1 else ''} on {len(nodes)} node{'s' if len(nodes) > 1 else ''} ({where})"
    if any(len(g) > 1 for g in summary["tensor_groups"]):
        line += "; TP groups within nodes" if summary["tensor_groups_within_nodes"] else "; TP groups SPAN NODES"
    return line


def write_placement(summary: dict, logdir: str) -> None:
    path = Path(logdir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "placement.json").write_text(json.dumps(summary, indent=2))


def announce(summary: dict, say: Callable[[str], None], logdir: Optional[str]) -> None:
    """Rank 0: the banner line, a warning line per problem, and placement.json in ``logdir``."""
    say(f"placement   {placement_line(summary)}")
    for problem in summary["problems"]:
        say(f"warning: {problem}")
    if logdir:
        write_placement(summary, logdir)

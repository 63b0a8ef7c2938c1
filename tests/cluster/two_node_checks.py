"""What every two-node launch must show, read from the run's own outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from run_helpers import free_port, scalars, write_run_config

STEPS = 4
NODES = {"node1": [0, 1], "node2": [2, 3]}


def deepspeed_exe() -> str:
    beside_python = Path(sys.executable).with_name("deepspeed")
    return str(beside_python) if beside_python.exists() else "deepspeed"


def megasparse_script() -> str:
    """The `megasparse` entry-point script, for launchers that run a file (deepspeed --launcher slurm)."""
    return str(Path(sys.executable).with_name("megasparse"))


def hostfile(folder: Path) -> Path:
    path = folder / "hostfile"
    path.write_text("node1 slots=2\nnode2 slots=2\n")
    return path


def tp2_dp2_config(folder: Path, corpus: dict, name: str, steps: int = STEPS, **train) -> Path:
    """TP2 × DP2 on 4 ranks: a TP group per node, data parallelism across the nodes."""
    return write_run_config(
        folder / f"{name}.yaml",
        corpus,
        train={"steps": steps, "eval_interval": 2, "eval_steps": 1, **train},
        sparsity={"cett_interval": 0},
        parallel={"zero_stage": 1, "tensor": 2},
        checkpoint={"dir": str(folder / name / "ckpt"), "interval": 2, "keep_last": 1},
        logging={"dir": str(folder / name / "tb"), "interval": 1},
    )


def deepspeed_local(nproc: int) -> list[str]:
    return [deepspeed_exe(), "--num_gpus", str(nproc), "--master_port", str(free_port()), "--module"]


def assert_two_node_run(run: Path, reference: Path, launcher_names_nodes: bool = True) -> None:
    """``run`` and ``reference`` are run folders (ckpt/, tb/) of the same config on 2 nodes and on 1."""
    placement = json.loads((run / "tb" / "placement.json").read_text())
    assert placement["problems"] == [], placement["problems"]
    assert placement["nodes"] == NODES, placement["nodes"]
    ranks = placement["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2, 3]
    assert [r["local_rank"] for r in ranks] == [0, 1, 0, 1]
    assert [r["node_rank"] for r in ranks] == [0, 0, 1, 1]
    if launcher_names_nodes:  # mpirun exports no node index; the others must agree with the hosts
        assert [r["launcher_node_rank"] for r in ranks] == [0, 0, 1, 1], ranks
    assert placement["tensor_groups"] == [[0, 1], [2, 3]] and placement["tensor_groups_within_nodes"]

    # One TensorBoard writer, on rank 0's node.
    events = sorted(p.name for p in (run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and ".node1." in events[0], events

    # The checkpoint: the files of the one-node run, each written once with the same tensors.
    tag = f"global_step{STEPS}"
    mine, theirs = run / "ckpt" / tag, reference / "ckpt" / tag
    assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for shard in sorted(mine.glob("mp_rank_*_model_states.pt")):
        a = torch.load(shard, map_location="cpu", weights_only=False)["module"]
        b = torch.load(theirs / shard.name, map_location="cpu", weights_only=False)["module"]
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert different == [], f"{shard.name}: {different}"

    # Losses equal the one-node run's (the same collectives over the same ranks).
    got, want = scalars(run / "tb"), scalars(reference / "tb")
    for tag_name in ("train/loss", "eval/loss", "train/tokens"):
        assert got[tag_name] == want[tag_name], f"{tag_name}: {got[tag_name]} vs {want[tag_name]}"
    assert [s for s, _ in got["train/loss"]] == list(range(1, STEPS + 1))

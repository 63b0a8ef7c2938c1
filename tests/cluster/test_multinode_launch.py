"""Two nodes of two ranks each (the emulation of .ci/start_two_node_cluster.sh), launched the
ways users launch on a cluster: the deepspeed launcher over pdsh/ssh, its slurm and openmpi
modes, and the SLURM batch scripts in examples/slurm/. Each run must place the ranks right,
keep the TP groups inside a node, write one TensorBoard log and one copy of each checkpoint
file, and train exactly as the same layout does on one node.
"""

from __future__ import annotations

import subprocess

import pytest
from run_helpers import REPO, free_port, run_env, run_train
from two_node_checks import (
    assert_two_node_run,
    deepspeed_exe,
    deepspeed_local,
    hostfile,
    megasparse_script,
    tp2_dp2_config,
)

# srun inside the emulation: the partition of the two nodes, two tasks on each, more tasks than cores.
SRUN_ARGS = "-p two --nodes=2 --ntasks-per-node=2 --overcommit"
MPIRUN_ARGS = "--allow-run-as-root --oversubscribe --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo"


@pytest.fixture(scope="module")
def one_node(tiny_corpus, tmp_path_factory):
    """The reference: the same TP2 × DP2 run, 4 ranks on this host under the deepspeed launcher."""
    d = tmp_path_factory.mktemp("one_node")
    run_train(tp2_dp2_config(d, tiny_corpus, "run"), launcher=deepspeed_local(4))
    return d / "run"


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_deepspeed_hostfile_over_pdsh(one_node, tiny_corpus, tmp_path):
    cfg = tp2_dp2_config(tmp_path, tiny_corpus, "run")
    launcher = [deepspeed_exe(), "--hostfile", str(hostfile(tmp_path)), "--master_port", str(free_port()), "--module"]
    proc = run_train(cfg, launcher=launcher)
    assert "node2: " in proc.stdout + proc.stderr, "pdsh prefixes the second node's output with its name"
    assert "placement   4 ranks on 2 nodes (node1: 0-1, node2: 2-3); TP groups within nodes" in proc.stdout
    assert_two_node_run(tmp_path / "run", one_node)


def test_deepspeed_launcher_slurm(one_node, tiny_corpus, tmp_path):
    """`--launcher slurm` runs `srun python -u SCRIPT`: DeepSpeed 0.19 drops `-m` for --module
    there, so the script is the `megasparse` entry point (docs/cluster.md)."""
    cfg = tp2_dp2_config(tmp_path, tiny_corpus, "run")
    cmd = [deepspeed_exe(), "--hostfile", str(hostfile(tmp_path)), "--launcher", "slurm"]
    cmd += ["--launcher_args", SRUN_ARGS, megasparse_script(), "train", "--config", str(cfg)]
    _run(cmd)
    assert_two_node_run(tmp_path / "run", one_node)


def test_deepspeed_launcher_openmpi(one_node, tiny_corpus, tmp_path):
    cfg = tp2_dp2_config(tmp_path, tiny_corpus, "run")
    launcher = [deepspeed_exe(), "--hostfile", str(hostfile(tmp_path)), "--launcher", "openmpi"]
    launcher += ["--launcher_args", MPIRUN_ARGS, "--module"]
    run_train(cfg, launcher=launcher)
    assert_two_node_run(tmp_path / "run", one_node, launcher_names_nodes=False)


def sbatch_two_nodes(script: str, cfg, out, *extra: str) -> list[str]:
    return [
        "sbatch",
        "--wait",
        "--partition=two",
        "--nodes=2",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--gpus-per-node=0",
        "--overcommit",
        f"--output={out}",
        "--export=ALL",
        *extra,
        str(REPO / "examples" / "slurm" / script),
        str(cfg),
    ]


@pytest.mark.parametrize("script", ["train.sbatch", "train-deepspeed.sbatch"])
def test_sbatch_two_nodes(one_node, tiny_corpus, tmp_path, script):
    """The example batch scripts: plain srun, and the deepspeed launcher with a hostfile that
    `megasparse hostfile` writes from SLURM_JOB_NODELIST."""
    cfg = tp2_dp2_config(tmp_path, tiny_corpus, "run")
    out = tmp_path / "job.out"
    proc = subprocess.run(
        sbatch_two_nodes(script, cfg, out),
        cwd=REPO,
        env={**run_env(), "HOSTFILE": str(tmp_path / "hostfile")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = out.read_text() if out.exists() else ""
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    assert "on node[1-2]" in log and f"step      {4}/4" in log
    if script == "train-deepspeed.sbatch":
        assert (tmp_path / "hostfile").read_text() == "node1 slots=2\nnode2 slots=2\n"
    assert_two_node_run(tmp_path / "run", one_node)

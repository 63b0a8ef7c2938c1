"""A MASTER_PORT that another process listens on: a single-node launch takes a free port
instead (rank 0 hands it to its peers), rather than failing with an EADDRINUSE traceback."""

from __future__ import annotations

import socket

from run_helpers import deepspeed_launcher, run_train, scalars, write_run_config

from megasparse.training.master_port import all_ranks_on_this_host, port_in_use


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen()
    return s


def test_port_in_use_sees_a_listener_only():
    with _listener() as s:
        port = s.getsockname()[1]
        assert port_in_use(port)
    assert not port_in_use(port)  # closed (a TIME_WAIT leftover would not count either)


def test_which_launches_are_single_node(monkeypatch):
    for name in ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NNODES", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    assert all_ranks_on_this_host(1) and not all_ranks_on_this_host(4)
    monkeypatch.setenv("LOCAL_SIZE", "2")  # deepspeed's launch.py: 2 of the 4 ranks here
    assert not all_ranks_on_this_host(4) and all_ranks_on_this_host(2)
    monkeypatch.delenv("LOCAL_SIZE")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NNODES", "2")
    assert not all_ranks_on_this_host(4)


def test_busy_port_replaced_on_one_node(tiny_corpus, tmp_path):
    cfg = write_run_config(
        tmp_path / "run.yaml",
        tiny_corpus,
        train={"steps": 2, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 0},
        logging={"dir": str(tmp_path / "tb"), "interval": 1},
    )
    launcher = deepspeed_launcher(2)
    with _listener() as busy:  # "another job" on the launcher's port
        port = busy.getsockname()[1]
        launcher[launcher.index("--master_port") + 1] = str(port)
        proc = run_train(cfg, launcher=launcher)
    assert f"MASTER_PORT {port} is in use on this host (another job?); using " in proc.stdout
    assert "Traceback" not in proc.stderr
    assert [s for s, _ in scalars(tmp_path / "tb")["train/loss"]] == [1, 2]

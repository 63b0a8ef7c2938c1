"""`megasparse hostfile`: SLURM node lists expanded as `scontrol show hostnames` does, bad input
as one line with exit status 2."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from run_helpers import REPO, run_env

from megasparse.cli.hostfile import expand_nodelist, main


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("node[1-2]", ["node1", "node2"]),
        ("gpu[08-10,15],login", ["gpu08", "gpu09", "gpu10", "gpu15", "login"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts
    if shutil.which("scontrol"):  # the reference, where SLURM is installed
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True).stdout
        assert out.split() == hosts


def test_hostfile_from_slurm_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-2]")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2(x2)")
    out = tmp_path / "hostfile"
    assert main(["--output", str(out)]) == 0
    assert out.read_text() == "node1 slots=2\nnode2 slots=2\n"
    # The script in tools/ is the same command.
    proc = subprocess.run(
        [sys.executable, "tools/write_hostfile.py", "--nodelist", "a[1-3]", "--slots", "8"],
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout == "a1 slots=8\na2 slots=8\na3 slots=8\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nodelist", "a[3-1]", "--slots", "1"], "node list 'a[3-1]': range 3-1 runs backwards"),
        (["--nodelist", "a[1-2", "--slots", "1"], "node list 'a[1-2': unbalanced brackets"),
        (["--nodelist", "a[x]", "--slots", "1"], "'x' is not a number or a range a-b"),
        (["--nodelist", "a1"], "slots per node: none found in SLURM_NTASKS_PER_NODE / SLURM_GPUS_ON_NODE"),
        (["--slots", "2"], "no node list: pass --nodelist or run inside a SLURM job"),
    ],
)
def test_bad_input_is_one_line(args, message, monkeypatch, capsys):
    for name in ("SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("megasparse hostfile: error: ") and message in err, err

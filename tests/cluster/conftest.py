"""The multi-node tests need the two emulated nodes of .ci/start_two_node_cluster.sh.

Without them every test here skips, naming what is missing; in CI (MEGASPARSE_REQUIRE_CLUSTER=1,
set by .ci/run, which starts the emulation) a missing piece fails the test instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

NODES = ("node1", "node2")
PARTITION = "two"


def _run(cmd: list[str], timeout: float = 20) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=None)
def missing_piece() -> str | None:
    """What of the emulated cluster does not answer, or None when all of it does."""
    for tool in ("ssh", "pdsh", "srun", "sbatch", "mpirun"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for node in NODES:
        got = _run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", node, "hostname"])
        if got != node:
            return f"`ssh {node} hostname` does not answer {node} (got {got!r})"
    states = _run(["sinfo", "-h", "-p", PARTITION, "-N", "-o", "%N %T"]).splitlines()
    up = {line.split()[0] for line in states if line.split()[1].rstrip("*") in ("idle", "mixed", "allocated")}
    if up != set(NODES):
        return f"SLURM partition '{PARTITION}' does not have {', '.join(NODES)} up (sinfo: {states})"
    return None


@pytest.fixture(scope="session", autouse=True)  # before the module-scoped reference runs
def two_node_cluster():
    missing = missing_piece()
    if missing is None:
        return
    if os.environ.get("MEGASPARSE_REQUIRE_CLUSTER") == "1":
        pytest.fail(f"two-node emulation: {missing}, although CI starts it (.ci/start_two_node_cluster.sh)")
    pytest.skip(f"two-node emulation not running: {missing} (start it with .ci/start_two_node_cluster.sh, as root)")

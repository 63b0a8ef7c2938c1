"""Runs a training command twice on a small tmpfs: ``unshare --map-root-user --mount python
small_disk_runs.py MOUNTPOINT SIZE COPY_TO RESULT_JSON -- CMD...``.

The tmpfs exists only in this process's private mount namespace, so nothing is left mounted
whatever happens; its content is copied to COPY_TO before the namespace goes away, and the two
runs' status and timed output lines are written to RESULT_JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from fault_helpers import timed_run  # noqa: E402 (the test folders are not packages)

if __name__ == "__main__":
    mountpoint, size, copy_to, result_json, sep, *cmd = sys.argv[1:]
    assert sep == "--", "usage: MOUNTPOINT SIZE COPY_TO RESULT_JSON -- CMD..."
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mountpoint], check=True)
    runs = []
    for _ in range(2):
        run = timed_run(cmd)
        runs.append({"returncode": run.returncode, "ended": run.ended, "lines": run.lines})
    shutil.copytree(mountpoint, copy_to, symlinks=True)
    with open(result_json, "w") as f:
        json.dump(runs, f)

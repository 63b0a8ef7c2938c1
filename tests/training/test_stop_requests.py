"""The pieces behind a clean stop and the placement check, without a training run: a launcher
process that exits is noticed, the stop file is seen and consumed, placement problems are named."""

from __future__ import annotations

import os
import subprocess
import sys

from megasparse.training.placement import placement_line, summarize_placement
from megasparse.training.signals import LauncherWatch, StopSignal, launcher_kind

# A child that notes its launchers, says so, and then reports when one of them has gone.
CHILD = """
import sys, time
from megasparse.training.signals import LauncherWatch
watch = LauncherWatch()
print(len(watch.watched), flush=True)
while watch.gone() is None:
    time.sleep(0.05)
print(watch.gone(), flush=True)
"""

# Stands in for the `deepspeed` command: a script of that name that starts the child and waits.
FAKE_RUNNER = f"""import subprocess, sys
subprocess.run([sys.executable, "-c", {CHILD!r}])
"""


def test_launcher_kinds():
    assert launcher_kind(["/venv/bin/python", "/venv/bin/deepspeed", "--num_gpus", "2"]) == "runner"
    assert launcher_kind(["python", "-u", "-m", "deepspeed.launcher.launch", "--world_info=x"]) == "launch"
    assert launcher_kind(["sshd: root@notty"]) == "ssh"
    assert launcher_kind(["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"]) is None
    assert launcher_kind(["bash", "-c", "python train.py"]) is None


def test_a_vanished_launcher_is_noticed(tmp_path):
    runner = tmp_path / "deepspeed"
    runner.write_text(FAKE_RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(runner)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "1", "the runner is watched"
    proc.kill()  # SIGKILL: the runner cannot pass anything on; the child must notice by itself
    proc.wait()
    line = proc.stdout.readline().strip()
    assert line.startswith(f"launcher process {proc.pid} (") and line.endswith(") exited"), line


def test_nothing_watched_without_a_launcher():
    # pytest's own ancestors (a shell, maybe an ssh login) are no launcher: they may end freely.
    watch = LauncherWatch()
    assert watch.watched == [] and watch.gone() is None


def test_stop_file_is_a_request_until_consumed(tmp_path):
    stop = StopSignal(str(tmp_path))
    assert stop.reason() is None
    (tmp_path / "STOP").touch()
    assert stop.reason() == f"stop file {tmp_path / 'STOP'}"
    stop.consume_stop_file()
    assert stop.reason() is None and not (tmp_path / "STOP").exists()


def _ranks(hosts, local, launcher):
    return [
        {"rank": i, "host": h, "local_rank": lr, "launcher_node_rank": n}
        for i, (h, lr, n) in enumerate(zip(hosts, local, launcher))
    ]


def test_placement_problems_are_named():
    good = summarize_placement(_ranks(["a", "a", "b", "b"], [0, 1, 0, 1], [0, 0, 1, 1]), [[0, 1], [2, 3]])
    assert good["problems"] == [] and good["nodes"] == {"a": [0, 1], "b": [2, 3]}
    assert placement_line(good) == "4 ranks on 2 nodes (a: 0-1, b: 2-3); TP groups within nodes"
    bad = summarize_placement(_ranks(["a", "b", "a", "b"], [0, 0, 0, 1], [0, 0, 0, 1]), [[0, 1], [2, 3]])
    assert bad["problems"] == [
        "rank 1 runs on b (node 1 by host name) but its launcher says node 0",
        "host a has local ranks [0, 0], expected 0..1",
        "tensor-parallel groups [[0, 1], [2, 3]] span nodes; use parallel.tensor ≤ processes per node "
        "so that TP traffic stays inside a node",
    ]
    assert placement_line(bad).endswith("; TP groups SPAN NODES")


def test_training_outlives_its_console(tmp_path):
    """A console that goes away (the pdsh ssh session closed, `| head`) must not end the run:
    rank 0's lines go to /dev/null from then on and the work goes on."""
    done = tmp_path / "done"
    script = (
        "from megasparse.training.metrics import MetricsWriter\n"
        "log = MetricsWriter(None, enabled=True)\n"
        "for i in range(20000):\n"
        "    log.line(f'step {i} ' + 'x' * 100)\n"
        f"open({str(done)!r}, 'w').write('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    writer.stdout.read(10)
    writer.stdout.close()  # the reader goes away after a few bytes
    _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err.decode()[-2000:]
    assert done.read_text() == "ok"

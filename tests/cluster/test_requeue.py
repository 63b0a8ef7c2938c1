"""Under SLURM a run stopped by a signal checkpoints, requeues its own job (`scontrol requeue`)
and the requeued job resumes from that checkpoint, on both example batch scripts across the
two emulated nodes:

* train.sbatch (srun): SIGUSR1 to the job steps, as `--signal=USR1@120` sends it before the
  time limit (`scancel --signal=USR1`);
* train-deepspeed.sbatch (ranks started by pdsh, outside SLURM's steps): SIGUSR1 to the batch
  shell, as `--signal=B:USR1@120` sends it (`scancel --batch --signal=USR1`); its trap creates
  the stop file the ranks watch.

SLURM holds a requeued job for a while before it may start again (Reason=BeginTime, about two
minutes here); the test lifts the hold (`scontrol update StartTime=now`), as an operator could.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from run_helpers import REPO, run_env
from test_multinode_launch import sbatch_two_nodes
from two_node_checks import tp2_dp2_config

STEPS = 30


def job_fields(job: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_job(job: str, until, timeout: float, what: str) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = job_fields(job)
        if until(fields):
            return fields
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job}: {what} not reached in {timeout} s; last state {job_fields(job)}")


def wait_log(path, needle: str, job: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and needle in path.read_text(errors="replace")):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job])
            raise AssertionError(f"{needle!r} never in {path}:\n{path.read_text()[-3000:] if path.exists() else ''}")
        time.sleep(0.3)


@pytest.mark.parametrize(
    "script, scancel_args, reason",
    [
        ("train.sbatch", ["--signal=USR1"], "signal SIGUSR1"),
        ("train-deepspeed.sbatch", ["--batch", "--signal=USR1"], "stop file"),
    ],
    ids=["srun", "deepspeed"],
)
def test_signal_checkpoints_requeues_and_resumes(tiny_corpus, tmp_path, script, scancel_args, reason):
    cfg = tp2_dp2_config(tmp_path, tiny_corpus, "run", steps=STEPS)
    out = tmp_path / "job.out"
    cmd = sbatch_two_nodes(script, cfg, out)
    cmd.remove("--wait")
    submitted = subprocess.run(
        [cmd[0], "--parsable", *cmd[1:]],
        cwd=REPO,
        env={**run_env(), "HOSTFILE": str(tmp_path / "hostfile")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    wait_log(out, "step      3/", job)
    start = time.monotonic()
    subprocess.run(["scancel", *scancel_args, job], check=True)
    fields = wait_job(job, lambda f: f.get("Restarts") == "1", 300, "a requeue")
    requeued_s = time.monotonic() - start
    print(f"\n{script}: requeued {requeued_s:.1f} s after the signal")
    wait_job(job, lambda f: f.get("JobState") == "PENDING", 120, "pending again")
    # slurmd refuses a credential issued within the second the old one was revoked ("Job
    # credential revoked"); SLURM's own hold is far longer, a few seconds suffice.
    time.sleep(5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    fields = wait_job(job, lambda f: f.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 600, "the end")
    log = out.read_text(errors="replace")
    assert fields["JobState"] == "COMPLETED" and fields["Restarts"] == "1", (fields, log[-3000:])
    pattern = rf"stopped early \({reason}[^)]*\): checkpoint written at step (\d+); exiting with status 75"
    stopped = re.search(pattern, log)
    assert stopped, log[-3000:]
    step = int(stopped.group(1))
    assert f"requeueing job {job}" in log and f"job {job} (restart 1)" in log
    assert re.search(rf"resumed from \S+global_step{step} at step {step}", log), log[-3000:]
    assert f"step     {STEPS}/{STEPS}" in log
    assert not (tmp_path / "run" / "ckpt" / "STOP").exists(), "the honoured stop request is removed"
    assert "Traceback" not in log, log[-3000:]

"""A signal to any process of a deepspeed launch ends it cleanly: every rank writes the same
checkpoint and exits with status 75 (stopped early, resumable), and the run resumes from it.

The single-node deepspeed runner has no signal handler of its own, so a SIGTERM ends it alone;
its ranks notice the loss of their launcher. launch.py forwards SIGTERM to the ranks but then
exits 1 itself (DeepSpeed's choice); the ranks still checkpoint and exit 75. Seconds to exit
are printed (pytest -s) and bounded loosely.
"""

from __future__ import annotations

import json
import signal

import pytest
from run_helpers import run_train, write_run_config
from stop_helpers import Launch, is_launch_py, is_rank

from megasparse.training.signals import EXIT_STOPPED

EXIT_BOUND_S = 90  # loose: two CPU ranks on a shared machine; the measured figures are far lower


def _config(tmp_path, corpus):
    return write_run_config(
        tmp_path / "run.yaml",
        corpus,
        train={"steps": 400, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        parallel={"zero_stage": 1},
        checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 0, "keep_last": 1},
        logging={"dir": str(tmp_path / "tb"), "interval": 1},
    )


def _latest_step(tmp_path) -> int:
    tag = (tmp_path / "ckpt" / "latest").read_text().strip()
    meta = json.loads((tmp_path / "ckpt" / tag / "megasparse_meta.json").read_text())
    assert tag == f"global_step{meta['step']}", (tag, meta["step"])
    return meta["step"]


# target -> (which processes get the signal, the signal, the launcher's exit status)
CASES = {
    "runner-SIGTERM": (lambda launch: [launch.proc.pid], signal.SIGTERM, -signal.SIGTERM),
    "launch.py-SIGTERM": (lambda launch: [p.pid for p in launch.processes(is_launch_py)], signal.SIGTERM, 1),
    "rank1-SIGUSR1": (lambda launch: [p.pid for p in launch.processes(is_rank(1))], signal.SIGUSR1, EXIT_STOPPED),
    "group-SIGTERM": (lambda launch: [-launch.proc.pid], signal.SIGTERM, -signal.SIGTERM),
}


@pytest.mark.parametrize("case", list(CASES))
def test_signal_to_a_deepspeed_launch(tiny_corpus, tmp_path, case):
    from run_helpers import deepspeed_launcher

    targets, sig, launcher_status = CASES[case]
    cfg = _config(tmp_path, tiny_corpus)
    launch = Launch([*deepspeed_launcher(2), "megasparse.train", "--config", str(cfg)], cfg, tmp_path / "out.log")
    launch.wait_for("step      3/")
    seconds = launch.signal_and_time(targets(launch), sig)
    out = launch.text()
    print(f"\n{case}: all processes gone {seconds:.1f} s after the signal; launcher status {launch.proc.returncode}")
    assert launch.proc.returncode == launcher_status, out[-3000:]
    assert seconds < EXIT_BOUND_S
    # Both ranks stopped at the same step, with a checkpoint, and said why, without a traceback.
    assert "Traceback" not in out, out[-3000:]
    stopped = [line for line in out.splitlines() if "stopped early (" in line]
    assert len(stopped) == 1, out[-3000:]
    step = _latest_step(tmp_path)
    assert f"checkpoint written at step {step}; exiting with status {EXIT_STOPPED}" in stopped[0]
    if case == "runner-SIGTERM":
        assert "launcher process" in stopped[0]
        # The run continues from that checkpoint.
        again = run_train(cfg, "--set", "train.exit_after_steps=2", launcher=deepspeed_launcher(2))
        assert f"at step {step}" in again.stdout and f"reached at step {step + 2}" in again.stdout

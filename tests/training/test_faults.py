"""Faults end cleanly and lose nothing: 2 ranks on the CPU under the real deepspeed launcher.

Each test injects one fault and checks what the user sees (one line naming the cause), the exit
status (training/exit_codes.py), what is left on disk, and that the job ends within a loose
bound of seconds after the fault.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import TimedRun, rank_pid, timed_run, train_command
from run_helpers import REPO, run_env, write_run_config

from megasparse.checkpoint import integrity
from megasparse.training import exit_codes

HERE = Path(__file__).resolve().parent


def _small_disk_runs(cmd: list[str], mountpoint: Path, size: str, copy_to: Path) -> list[TimedRun]:
    """``cmd`` run twice with its checkpoint disk a ``size`` tmpfs at ``mountpoint``."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux's unshare is not installed")
    probe = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        # Some containers forbid mount namespaces; the half-way write test below still runs.
        pytest.skip(f"cannot mount a tmpfs in a private namespace here: {probe.stderr.strip()}")
    result = copy_to.with_suffix(".json")
    subprocess.run(
        ["unshare", "--map-root-user", "--mount", sys.executable, str(HERE / "small_disk_runs.py")]
        + [str(mountpoint), size, str(copy_to), str(result), "--", *cmd],
        cwd=REPO,
        env=run_env(),
        check=True,
        timeout=900,
    )
    return [
        TimedRun(returncode=r["returncode"], lines=[tuple(x) for x in r["lines"]], ended=r["ended"])
        for r in json.loads(result.read_text())
    ]


def test_disk_full_during_a_save_stops_once_with_one_line(tiny_corpus, tmp_path):
    """A 4 MB disk holds the step-3 checkpoint (2.1 MB) but not a second one beside it."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    cfg = write_run_config(
        tmp_path / "run.yaml",
        tiny_corpus,
        train={"steps": 6, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        checkpoint={"dir": str(mountpoint / "ckpt"), "interval": 3, "keep_last": 1},
        logging={"dir": str(tmp_path / "tb"), "interval": 1},
    )
    first, again = _small_disk_runs(train_command(cfg), mountpoint, "4m", tmp_path / "after")

    assert first.returncode == exit_codes.DISK_FULL, first.output[-3000:]
    errors = first.errors()
    assert len(errors) == 1 and "Traceback" not in first.output, first.output[-3000:]
    assert f"checkpoint.dir {mountpoint / 'ckpt'}: not enough disk space: {mountpoint} has" in errors[0]
    assert "a checkpoint at step 6 needs about 3.3 MB" in errors[0]
    assert f"the previous checkpoint {mountpoint / 'ckpt' / 'global_step3'} is intact" in errors[0]
    seconds_to_exit = first.ended - first.first("step      6/6")
    assert seconds_to_exit < 30, seconds_to_exit
    # Nothing lost: step 3 complete and named by `latest`, no partial step-6 folder.
    after = tmp_path / "after" / "ckpt"
    assert (after / "latest").read_text() == "global_step3"
    assert sorted(p.name for p in after.iterdir() if p.is_dir()) == ["global_step3"]
    assert integrity.folder_problem(after / "global_step3") is None
    # No retry loop: the restart stops before training a step, with the same line.
    assert again.returncode == exit_codes.DISK_FULL
    assert "step      4/6" not in again.output and "not enough disk space" in again.errors()[0]
    print(f"disk full: exit {seconds_to_exit:.1f} s after step 6; restart refused after {again.ended:.1f} s")


def _nan_config(tmp_path, corpus, **train):
    return write_run_config(
        tmp_path / "run.yaml",
        corpus,
        train={"steps": 8, "eval_interval": 0, **train},
        sparsity={"cett_interval": 0},
        checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 1, "keep_last": 2},
        logging={"dir": str(tmp_path / "tb"), "interval": 1},
    )


def test_non_finite_gradients_stop_with_the_last_good_checkpoint(tiny_corpus, tmp_path):
    """lr 1e8: step 1 is finite, then every gradient is non-finite (DeepSpeed skips the update)."""
    cfg = _nan_config(tmp_path, tiny_corpus, optimizer={"lr": 1e8})
    run = timed_run(train_command(cfg))
    assert run.returncode == exit_codes.NON_FINITE, run.output[-3000:]
    assert run.errors() == [
        "megasparse.train: error: step 2: non-finite gradients; stopped with nothing saved (the last checkpoint "
        f"{tmp_path / 'ckpt' / 'global_step1'} is kept). Lower train.optimizer.lr, check the data, or set "
        "train.nonfinite=skip to skip such steps"
    ]
    assert "Traceback" not in run.output
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step1"
    assert integrity.sealed_tags(tmp_path / "ckpt") == ["global_step1"]
    seconds = run.ended - run.first("saved checkpoint")
    assert seconds < 30, seconds
    print(f"non-finite gradients (stop): exit {seconds:.1f} s after the step-1 checkpoint")


def test_nan_loss_stops_at_once_and_never_reads_as_sparse(tiny_corpus, tmp_path):
    """Embeddings × 1e40: the very first forward pass is NaN."""
    cfg = _nan_config(tmp_path, tiny_corpus)
    run = timed_run(train_command(cfg, "--set", "model.scale_emb=1e40"))
    assert run.returncode == exit_codes.NON_FINITE, run.output[-3000:]
    (error,) = run.errors()
    assert error.startswith("megasparse.train: error: step 1: loss nan; stopped with nothing saved (no checkpoint")
    assert not (tmp_path / "ckpt").exists() or integrity.sealed_tags(tmp_path / "ckpt") == []
    assert "act 0.0%" not in run.output
    after = run.ended - run.first("error: step 1")
    print(f"NaN loss (stop): job gone {after:.1f} s after the error, {run.ended:.1f} s in all")


def test_skip_mode_skips_a_bounded_number_of_steps_with_consistent_counters(tiny_corpus, tmp_path):
    cfg = _nan_config(tmp_path, tiny_corpus, optimizer={"lr": 1e8}, nonfinite="skip", max_skipped_steps=3)
    run = timed_run(train_command(cfg))
    assert run.returncode == exit_codes.NON_FINITE, run.output[-3000:]
    for step, in_a_row in ((2, 1), (3, 2), (4, 3)):
        assert (
            f"warning: step {step}: non-finite gradients; update skipped ({in_a_row} in a row, train.nonfinite=skip)"
        ) in run.output
    (error,) = run.errors()
    assert "step 5: non-finite gradients, 4 steps in a row skipped (train.max_skipped_steps=3)" in error
    from run_helpers import scalars

    tb = scalars(tmp_path / "tb")
    assert tb["train/skipped_steps"] == [(1, 0.0), (2, 1.0), (3, 2.0), (4, 3.0)]
    assert [v for _, v in tb["train/tokens"]] == [128.0, 256.0, 384.0, 512.0]  # the data was read
    # DeepSpeed steps the LR schedule only with applied updates: warmup stays at its step-1 value.
    assert len({v for _, v in tb["train/lr"]}) == 1
    # Skipped steps' activation counts are dropped; nothing is logged for their windows.
    assert [s for s, _ in tb["sparsity/activation_ratio"]] == [1]
    # Checkpoints of skipped steps hold the last applied weights and the skip count.
    meta = json.loads((tmp_path / "ckpt" / "global_step4" / "megasparse_meta.json").read_text())
    assert meta["progress"]["skipped_steps"] == 3 and meta["progress"]["step"] == 4
    after = run.ended - run.first("error: step 5")
    print(f"skip mode: stopped at the 4th skip in a row; job gone {after:.1f} s after it")


def test_a_stopped_rank_is_named_and_the_job_ends(tiny_corpus, tmp_path):
    """SIGSTOP rank 1 of 2 after step 3; train.collective_timeout_s=20."""
    cfg = write_run_config(
        tmp_path / "run.yaml",
        tiny_corpus,
        train={"steps": 100000, "eval_interval": 0, "collective_timeout_s": 20},
        sparsity={"cett_interval": 0},
        checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 2, "keep_last": 1},
        logging={"dir": str(tmp_path / "tb"), "interval": 1},
    )
    stopped: dict = {}

    def stop_rank_1(line: str, proc: subprocess.Popen) -> None:
        if line.startswith("step      3/") and not stopped:
            pid = rank_pid(proc.pid, 1)
            assert pid is not None, "rank 1 not found"
            os.kill(pid, signal.SIGSTOP)
            stopped.update(pid=pid, at=time.monotonic())

    start = time.monotonic()
    try:
        run = timed_run(train_command(cfg), on_line=stop_rank_1, timeout=300)
    finally:
        outlived = bool(stopped) and _alive(stopped["pid"])
        if outlived:  # never leave a stopped process behind, whatever the test finds
            os.kill(stopped["pid"], signal.SIGKILL)
    assert stopped, run.output[-3000:]
    assert run.returncode == exit_codes.HUNG_RANK, run.output[-3000:]
    (error,) = [e for e in run.errors() if "no progress" in e]
    assert error.startswith("megasparse.train: error: rank 0: no progress for ")
    assert "rank 1 stopped responding (no heartbeat for" in error and "last seen at step " in error
    assert "train.collective_timeout_s=20" in error and "Traceback" not in run.output
    stopped_at = stopped["at"] - start
    reported = run.first("no progress for") - stopped_at
    seconds = run.ended - stopped_at
    # Reported just before the 20 s collective timeout; the deepspeed launcher then gives the
    # stopped rank its fixed 30 s of SIGTERM grace before SIGKILL.
    assert 15 < reported < 30 and seconds < 75, (reported, seconds)
    assert not outlived, "the stopped rank outlived the job"
    # Nothing lost beyond the steps since the last checkpoint: it is complete.
    tag = (tmp_path / "ckpt" / "latest").read_text()
    assert integrity.folder_problem(tmp_path / "ckpt" / tag) is None
    print(f"stopped rank: reported {reported:.1f} s, job gone {seconds:.1f} s after SIGSTOP; resume point {tag}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_bad_inputs_are_one_line_from_one_rank(tiny_corpus, tmp_path):
    """Token ids beyond the vocabulary, and a .bin paired with another dataset's .idx."""
    cfg = write_run_config(tmp_path / "run.yaml", tiny_corpus, train={"steps": 2})
    vocab = timed_run(train_command(cfg, "--set", "model.vocab_size=100"))
    assert vocab.returncode == exit_codes.BAD_INPUT, vocab.output[-3000:]
    (error,) = vocab.errors()
    assert error.startswith(f"megasparse.train: error: data.train: {tiny_corpus['train']} holds token id 511,")
    assert "model.vocab_size has only 100 ids" in error and "Traceback" not in vocab.output

    mixed = tmp_path / "mixed_text_document"
    shutil.copy(tiny_corpus["train"] + ".bin", str(mixed) + ".bin")
    shutil.copy(tiny_corpus["valid"] + ".idx", str(mixed) + ".idx")
    pair = timed_run(train_command(cfg, "--set", f"data.train=[{mixed}]"))
    assert pair.returncode == exit_codes.BAD_INPUT, pair.output[-3000:]
    (error,) = pair.errors()
    assert f"{mixed}.bin: " in error and "do not belong together" in error and "Traceback" not in pair.output
    print(f"bad inputs: exit after {vocab.ended:.1f} s (vocabulary) and {pair.ended:.1f} s (.bin/.idx pair)")


def test_a_write_that_fails_half_way_removes_the_partial_folder(tiny_corpus, tmp_path):
    """Rank 1's optimizer shard of step 6 goes to /dev/full: its write fails with ENOSPC while
    the other files are written (the disk itself has room, so the pre-save check passes)."""
    ckpt = tmp_path / "ckpt"
    (ckpt / "global_step6").mkdir(parents=True)
    (ckpt / "global_step6" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").symlink_to("/dev/full")
    cfg = write_run_config(
        tmp_path / "run.yaml",
        tiny_corpus,
        train={"steps": 6, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        checkpoint={"dir": str(ckpt), "interval": 3, "keep_last": 1},
        logging={"dir": str(tmp_path / "tb"), "interval": 1},
    )
    run = timed_run(train_command(cfg))
    assert run.returncode == exit_codes.DISK_FULL, run.output[-3000:]
    assert "Traceback" not in run.output, run.output[-3000:]
    rank1 = [e for e in run.errors() if e.startswith("[rank 1] ")]
    assert len(rank1) == 1 and f"{ckpt / 'global_step6'}: writing the checkpoint failed (" in rank1[0]
    assert f"the partial folder was removed; the previous checkpoint {ckpt / 'global_step3'} is intact" in rank1[0]
    assert (ckpt / "latest").read_text() == "global_step3"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["global_step3"]
    assert integrity.folder_problem(ckpt / "global_step3") is None
    seconds = run.ended - run.first("step      6/6")
    assert seconds < 30, seconds
    print(f"write failing half way: exit {seconds:.1f} s after step 6")


def test_kills_during_saves_and_prunes_leave_only_complete_checkpoints(tiny_corpus, tmp_path):
    """A checkpoint every step (keep 2), so most of the run is saving and pruning; rank 0 (which
    writes the metadata, the manifest and `latest`, and prunes) is SIGKILLed at a random moment,
    three times, each restart resuming from what the previous one left."""
    import random

    from megasparse.checkpoint.reader import list_checkpoints

    cfg = write_run_config(
        tmp_path / "run.yaml",
        tiny_corpus,
        train={"steps": 30, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        checkpoint={"dir": str(tmp_path / "ckpt"), "interval": 1, "keep_last": 2},
        logging={"dir": str(tmp_path / "tb"), "interval": 1},
    )
    ckpt = tmp_path / "ckpt"
    rng = random.Random(3)
    for attempt in range(3):
        delay = rng.uniform(0.05, 0.6)
        killed: dict = {}

        def kill_rank_0(line: str, proc: subprocess.Popen) -> None:
            if line.startswith("saved checkpoint") and not killed:
                time.sleep(delay)
                pid = rank_pid(proc.pid, 0)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed["pid"] = pid

        run = timed_run(train_command(cfg), on_line=kill_rank_0)
        assert killed and run.returncode != 0, f"attempt {attempt}: the kill did not land\n{run.output[-2000:]}"
        sealed = integrity.sealed_tags(ckpt)
        for tag in sealed:
            assert integrity.folder_problem(ckpt / tag) is None, f"attempt {attempt}: {tag} looks complete but is not"
        assert (ckpt / "latest").read_text() in sealed
        assert [c.path.name for c in list_checkpoints(ckpt)] == sealed
    final = timed_run(train_command(cfg))
    assert final.returncode == 0 and "step     30/30" in final.output, final.output[-3000:]
    assert integrity.sealed_tags(ckpt) == ["global_step29", "global_step30"]

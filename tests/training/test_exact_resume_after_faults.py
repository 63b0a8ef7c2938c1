"""Exact resume after faults, on 2 CPU ranks under the real deepspeed launcher, for DP2 and TP2.

The faulted run is killed (SIGKILL to rank 1) mid-run; then the checkpoint `latest` names is
damaged (one flipped bit), so the restart must name it, fall back to the one before, and train
from there. Every per-step value (losses, learning rate, tokens, gradient norm), the activation
counters, the evaluations and the live CETT calibration must then equal an uninterrupted run's
bit for bit: the data order, the RNG states and the counters all continue exactly.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from fault_helpers import rank_pid, timed_run, train_command
from run_helpers import scalars, write_run_config

from megasparse.checkpoint import integrity

STEPS = 40
COMPARED = (
    "train/loss",
    "train/lr",
    "train/tokens",
    "train/grad_norm",
    "train/skipped_steps",
    "sparsity/activation_ratio",
    "sparsity/layer_01/activation_ratio",
    "eval/loss",
    "sparsity/cett/value",
    "sparsity/cett/activation_ratio",
)


def _config(tmp_path, corpus, name: str, parallel: dict):
    return write_run_config(
        tmp_path / f"{name}.yaml",
        corpus,
        train={"steps": STEPS, "eval_interval": 10, "eval_steps": 2},
        sparsity={"cett_interval": 10, "cett_batches": 2},
        parallel={"zero_stage": 1, **parallel},
        checkpoint={"dir": str(tmp_path / name / "ckpt"), "interval": 2, "keep_last": 2},
        logging={"dir": str(tmp_path / name / "tb"), "interval": 1},
    )


def _flip_a_bit(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("layout", ["dp2", "tp2"])
def test_kill_then_damaged_latest_resumes_bit_identically(tiny_corpus, tmp_path, layout):
    parallel = {"tensor": 2} if layout == "tp2" else {}
    reference = timed_run(train_command(_config(tmp_path, tiny_corpus, "straight", parallel)))
    assert reference.returncode == 0, reference.output[-3000:]

    cfg = _config(tmp_path, tiny_corpus, "faulted", parallel)
    killed: dict = {}

    def kill_rank_1(line: str, proc) -> None:
        if line.startswith("step      7/") and not killed:
            pid = rank_pid(proc.pid, 1)
            assert pid is not None, "rank 1 not found"
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, at=time.monotonic() - start)

    start = time.monotonic()
    first = timed_run(train_command(cfg), on_line=kill_rank_1)
    assert killed and first.returncode != 0, first.output[-3000:]
    seconds = first.ended - killed["at"]
    assert seconds < 30, seconds  # the surviving rank fails on its next collective
    assert f"step     {STEPS}/{STEPS}" not in first.output, "the run ended before the kill landed"
    ckpt = tmp_path / "faulted" / "ckpt"
    latest = (ckpt / "latest").read_text()
    previous = integrity.sealed_tags(ckpt)[-2]
    _flip_a_bit(ckpt / latest / "mp_rank_00_model_states.pt")

    second = timed_run(train_command(cfg))
    assert second.returncode == 0, second.output[-3000:]
    assert f"checkpoint {ckpt / latest} is not usable: {ckpt / latest / 'mp_rank_00_model_states.pt'}" in (
        second.output
    )
    assert f"resumed from {ckpt / previous} at step {int(previous[len('global_step') :])}" in second.output

    a, b = scalars(tmp_path / "straight" / "tb"), scalars(tmp_path / "faulted" / "tb")
    for tag in COMPARED:
        assert dict(a[tag]) == dict(b[tag]), f"{layout}: {tag} differs after the kill and the fallback"
    assert dict(b["train/tokens"])[STEPS] == STEPS * 4 * 32
    print(f"{layout}: job gone {seconds:.1f} s after SIGKILL of rank 1; resumed from {previous} after {latest} failed")

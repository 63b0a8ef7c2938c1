"""Resharding with optimizer state: a TP2×PP2 run, converted at step 2 to one process (ZeRO-1
and ZeRO-0), to TP1×PP2, to TP2×PP1 and to DP2 (ZeRO-2 and ZeRO-3), continues with the same losses as the
run that never stopped.

This is the test that catches a resume that silently starts afresh: with the Adam moments,
step count or LR schedule lost, step 3's update differs at once (fresh moments give steps of
≈ lr·sign(g), far larger than the saved ones), and the losses after it move by much more than
the tolerance the parallelism tests use for TP/PP against one process (1e-4 relative).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import run_helpers

REPO = Path(__file__).resolve().parents[2]
STEPS = 5
REL_TOLERANCE = 1e-4  # tests/parallel/pp_checks.py: TP/PP losses against one process


def _losses(tb: Path) -> dict[int, float]:
    return {step: value for step, value in run_helpers.scalars(tb)["train/loss"]}


def _convert(src: Path, dst: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), str(src), str(dst), "--to", "megasparse"]
    env = run_helpers.run_env()
    return subprocess.run([*cmd, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def source_run(tiny_corpus, tmp_path_factory):
    """TP2×PP2 for STEPS steps, checkpoints at every step (step 2 is the one converted)."""
    root = tmp_path_factory.mktemp("reshard")
    cfg = run_helpers.write_run_config(
        root / "src.yaml",
        tiny_corpus,
        train={"steps": STEPS, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        parallel={"tensor": 2, "pipeline": 2, "zero_stage": 1},
        checkpoint={"dir": str(root / "src" / "ckpt"), "interval": 1, "keep_last": STEPS},
        logging={"dir": str(root / "src" / "tb"), "interval": 1},
    )
    run_helpers.run_train(cfg, launcher=run_helpers.deepspeed_launcher(4))
    return root, tiny_corpus, _losses(root / "src" / "tb")


@pytest.mark.parametrize(
    "tp,pp,dp,zero",
    [(1, 1, 1, 1), (1, 2, 1, 1), (2, 1, 1, 1), (1, 1, 1, 0), (1, 1, 2, 2), (1, 1, 2, 3)],
    ids=["1x1", "tp1xpp2", "tp2xpp1", "1x1-zero0", "dp2-zero2", "dp2-zero3"],
)
def test_resharded_checkpoint_resumes_with_the_same_losses(source_run, tp, pp, dp, zero):
    root, corpus, reference = source_run
    name = f"to_{tp}x{pp}x{dp}_z{zero}"
    dst = root / name / "ckpt"
    layout = ["--tp", str(tp), "--pp", str(pp), "--dp", str(dp), "--zero-stage", str(zero)]
    proc = _convert(root / "src" / "ckpt" / "global_step2", dst, *layout, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = run_helpers.write_run_config(
        root / f"{name}.yaml",
        corpus,
        train={"steps": STEPS, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        parallel={"tensor": tp, "pipeline": pp, "zero_stage": zero},
        checkpoint={"dir": str(dst), "interval": 0, "keep_last": 2, "resume": "auto"},
        logging={"dir": str(root / name / "tb"), "interval": 1},
    )
    world = tp * pp * dp
    proc = run_helpers.run_train(cfg, launcher=run_helpers.deepspeed_launcher(world) if world > 1 else None)
    assert "global_step2" in proc.stdout + proc.stderr  # the banner names the checkpoint it resumed from
    resumed = _losses(root / name / "tb")
    assert sorted(resumed) == list(range(3, STEPS + 1)), "the resumed run must start at step 3"
    for step in range(3, STEPS + 1):
        want, got = reference[step], resumed[step]
        assert abs(got - want) <= REL_TOLERANCE * max(1.0, abs(want)), f"step {step}: {got} vs {want}"


def test_a_resume_in_another_layout_is_refused_with_the_convert_command(source_run):
    root, corpus, _ = source_run
    cfg = run_helpers.write_run_config(
        root / "wrong.yaml",
        corpus,
        train={"steps": STEPS, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        parallel={"zero_stage": 1},
        checkpoint={"dir": str(root / "src" / "ckpt"), "interval": 0, "resume": "auto"},
        logging={"dir": str(root / "wrong_tb"), "interval": 1},
    )
    proc = run_helpers.run_train(cfg, check=False)
    assert proc.returncode == 2
    assert "megasparse convert" in proc.stderr and "--to megasparse --tp 1 --pp 1" in proc.stderr
    assert "Traceback" not in proc.stderr

"""Checkpoint integrity: the manifest written last and removed first, damaged or partial folders
named in one line, resume falling back to the newest folder that checks out.

The corruptions are the ten of the fault survey, applied to real checkpoints of a short run
(steps 3 and 6, ``latest`` = step 6).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import run_helpers

from megasparse.checkpoint import integrity, manifest
from megasparse.checkpoint.engine import LATEST_FILE, META_FILE, CheckpointError
from megasparse.checkpoint.reader import list_checkpoints, load_model

MODEL = "mp_rank_00_model_states.pt"
OPTIM = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


@pytest.fixture(scope="module")
def run_dir(tiny_corpus, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("integrity")
    cfg = run_helpers.write_run_config(
        d / "run.yaml",
        tiny_corpus,
        train={"steps": 6, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        checkpoint={"dir": str(d / "ckpt"), "interval": 3, "keep_last": 2},
        logging={"dir": str(d / "tb"), "interval": 3},
    )
    run_helpers.run_train(cfg)
    return d / "ckpt"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


def _edit_meta(path: Path) -> None:
    path.write_text(path.read_text().replace('"world_size": 1', '"world_size": 4'))


# corruption → (the file it damages, relative to the checkpoint dir; the tag resume must choose)
CORRUPTIONS = {
    "model states truncated": (lambda d: _truncate(d / "global_step6" / MODEL), MODEL, "global_step3"),
    "rank state truncated": (
        lambda d: _truncate(d / "global_step6" / "megasparse_rank0.pt"),
        "megasparse_rank0.pt",
        "global_step3",
    ),
    "optimizer shard deleted": (lambda d: (d / "global_step6" / OPTIM).unlink(), OPTIM, "global_step3"),
    "rank state deleted": (
        lambda d: (d / "global_step6" / "megasparse_rank0.pt").unlink(),
        "megasparse_rank0.pt",
        "global_step3",
    ),
    "metadata truncated": (lambda d: _truncate(d / "global_step6" / META_FILE), META_FILE, "global_step3"),
    "metadata edited": (lambda d: _edit_meta(d / "global_step6" / META_FILE), META_FILE, "global_step3"),
    "tag folder deleted": (
        lambda d: shutil.rmtree(d / "global_step6"),
        manifest.MANIFEST_FILE,
        "global_step3",
    ),
    "latest emptied": (lambda d: (d / LATEST_FILE).write_text(""), None, "global_step6"),
    "model states deleted": (lambda d: (d / "global_step6" / MODEL).unlink(), MODEL, "global_step3"),
    "one bit flipped": (lambda d: _flip_bit(d / "global_step6" / MODEL), MODEL, "global_step3"),
}


def test_a_complete_checkpoint_checks_out(run_dir):
    assert integrity.sealed_tags(run_dir) == ["global_step3", "global_step6"]
    for tag in ("global_step3", "global_step6"):
        recorded = manifest.read_manifest(run_dir / tag)
        assert set(recorded) == set(manifest.files_to_record(run_dir / tag))  # every file but itself
        assert integrity.folder_problem(run_dir / tag) is None
    warnings: list[str] = []
    assert integrity.choose_resume_point("auto", str(run_dir), warnings.append) == (str(run_dir), "global_step6")
    assert warnings == []


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_resume_names_the_damaged_file_and_falls_back(run_dir, tmp_path, kind):
    corrupt, damaged, expected = CORRUPTIONS[kind]
    d = tmp_path / "ckpt"
    shutil.copytree(run_dir, d)
    corrupt(d)
    warnings: list[str] = []
    assert integrity.choose_resume_point("auto", str(d), warnings.append) == (str(d), expected)
    if damaged is None:
        assert warnings == [f"resuming from {d / expected} instead of no {d / LATEST_FILE}"]
        return
    assert len(warnings) == 2, warnings
    assert str(d / "global_step6" / damaged) in warnings[0] and "\n" not in warnings[0]
    assert warnings[1] == f"resuming from {d / 'global_step3'} instead of 'global_step6' ({d / LATEST_FILE})"


def test_no_usable_checkpoint_is_one_line(run_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(run_dir, d)
    _flip_bit(d / "global_step6" / MODEL)
    _truncate(d / "global_step3" / OPTIM)
    warnings: list[str] = []
    with pytest.raises(CheckpointError, match="no usable checkpoint .tried global_step6, global_step3."):
        integrity.choose_resume_point("auto", str(d), warnings.append)
    assert str(d / "global_step3" / OPTIM) in warnings[1]


def test_readers_refuse_damaged_weights_naming_the_file(run_dir, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(run_dir, d)
    _flip_bit(d / "global_step6" / MODEL)
    with pytest.raises(CheckpointError, match=f"{MODEL}: checksum differs"):
        load_model(d / "global_step6")
    _truncate(d / "global_step3" / MODEL)
    with pytest.raises(CheckpointError, match=f"{MODEL}: .* bytes, the manifest says"):
        list_checkpoints(d)
    (d / "global_step3" / manifest.MANIFEST_FILE).unlink()  # e.g. an interrupted prune
    assert [c.step for c in list_checkpoints(d)] == [6]


# A child that keeps saving fake checkpoints (meta + 4 shards) and pruning to the newest two;
# the parent kills it at random moments and checks what the readers see after each kill.
_SAVER = """
import sys, json
from pathlib import Path
from megasparse.checkpoint import integrity
from megasparse.checkpoint.engine import META_FILE
root = Path(sys.argv[1])
step = int(sys.argv[2])
while True:
    step += 1
    folder = root / f"global_step{step}"
    folder.mkdir(parents=True)
    for i in range(4):
        (folder / f"shard{i}.pt").write_bytes(bytes([step % 251]) * (3 << 20))
    (folder / META_FILE).write_text(json.dumps({"step": step}))
    integrity.seal(folder)
    (root / "latest").write_text(folder.name)
    integrity.prune(root, keep_last=2)
"""


def test_kills_during_save_and_prune_never_leave_a_folder_that_looks_complete(tmp_path):
    root = tmp_path / "ckpt"
    root.mkdir()
    rng = __import__("random").Random(7)
    step = 0
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(root), str(step)], env=run_helpers.run_env(), cwd=run_helpers.REPO
        )
        time.sleep(1.0 + rng.random() * 1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for tag in integrity.sealed_tags(root):
            assert integrity.folder_problem(root / tag) is None, f"{tag} has a manifest but is damaged"
        steps = [int(p.name[len("global_step") :]) for p in root.iterdir() if p.name.startswith("global_step")]
        step = max(steps, default=step)
    # Left-overs of interrupted saves and prunes are cleared by the next prune.
    integrity.prune(root, keep_last=2)
    kept = integrity.sealed_tags(root)
    assert len(kept) == 2
    newest = int(kept[-1][len("global_step") :])
    for folder in root.iterdir():
        if folder.is_dir() and folder.name not in kept:
            # only the save that was under way (newer), or a prune stopped between its first two unlinks
            assert int(folder.name[len("global_step") :]) > newest or (folder / META_FILE).exists(), folder.name


def test_seal_adds_a_manifest_only_to_folders_that_look_whole(run_dir, tmp_path, capsys):
    """Folders saved without a manifest (an older megasparse) can be sealed after a check."""
    from megasparse.cli.seal import main

    d = tmp_path / "ckpt"
    shutil.copytree(run_dir, d)
    for tag in ("global_step3", "global_step6"):
        (d / tag / manifest.MANIFEST_FILE).unlink()
    (d / "global_step3" / "megasparse_rank0.pt").unlink()  # as a killed save would leave it
    assert main([str(d)]) == 2
    out, err = capsys.readouterr()
    assert f"{d / 'global_step6'}: sealed (5 files)" in out  # 2 DeepSpeed files, meta, rank state, layout record
    assert err.strip() == (
        f"megasparse seal: error: {d / 'global_step3'}: megasparse_rank0.pt missing (the layout had 1 ranks); "
        "the folder is incomplete"
    )
    assert integrity.sealed_tags(d) == ["global_step6"] and integrity.folder_problem(d / "global_step6") is None
    assert main([str(d / "global_step6")]) == 0 and "already sealed" in capsys.readouterr().out

"""``megasparse convert --to megasparse``: every layout consolidates to the same weights, and bad
input ends in one error line with exit status 2, leaving any existing output as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import run_helpers
import torch
from layout_runs import LAYOUTS

from megasparse.checkpoint.reader import list_checkpoints, load_model, load_state_dict
from megasparse.cli.convert import main as convert_main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "convert_checkpoint.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *map(str, args), "--no-progress"]
    return subprocess.run(cmd, cwd=REPO, env=run_helpers.run_env(), capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if "convert_checkpoint.py: error" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_consolidates_to_the_same_weights(checkpoints, tmp_path, layout):
    out = tmp_path / "plain"
    assert convert_main([str(checkpoints[layout]), str(out), "--to", "megasparse", "--no-progress"]) == 0
    converted = list_checkpoints(out)[0]
    assert converted.meta["format"] == "layout-free" and converted.meta["layout"]["tensor"] == 1
    original, plain = load_state_dict(list_checkpoints(checkpoints[layout])[0]), load_state_dict(converted)
    assert original.keys() == plain.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, plain[name]), name  # the fp32 masters, bit for bit
    tokens = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(5))  # [b, s]
    with torch.no_grad():
        assert torch.equal(load_model(checkpoints[layout])(tokens), load_model(converted)(tokens))


def test_converted_checkpoint_carries_optimizer_state_and_progress(checkpoints, tmp_path):
    out = tmp_path / "tp2"
    assert convert_main([str(checkpoints["tp2pp2"]), str(out), "--to", "megasparse", "--tp", "2", "--no-progress"]) == 0
    folder = out / "global_step1"
    meta = json.loads((folder / "megasparse_meta.json").read_text())
    assert meta["layout"] == {"world_size": 2, "tensor": 2, "pipeline": 1, "data": 1, "zero_stage": 1}
    assert meta["progress"]["step"] == 1 and meta["converted_from"]["layout"]["pipeline"] == 2
    training = torch.load(folder / "megasparse_training.pt", weights_only=True)
    assert training["optimizer_step"] == 1 and training["lr_scheduler"]["last_epoch"] == 1
    assert training["loader"]["consumed_samples"] == 4
    index = json.loads((folder / "optimizer.safetensors.index.json").read_text())["weight_map"]
    assert {"exp_avg/embed.weight", "exp_avg_sq/layers.1.mlp.down_proj.weight"} <= set(index)
    assert (out / "latest").read_text() == "global_step1"


def test_missing_shard_is_one_line(checkpoints, tmp_path):
    src = tmp_path / "global_step1"
    shutil.copytree(checkpoints["tp2pp2"], src)
    (src / "zero_pp_rank_0_mp_rank_03_optim_states.pt").unlink()
    line = _one_error_line(_run(src, tmp_path / "out", "--to", "megasparse"))
    assert "zero_pp_rank_0_mp_rank_03_optim_states.pt: missing" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_mismatched_layout_is_one_line(checkpoints, tmp_path):
    src = tmp_path / "global_step1"
    shutil.copytree(checkpoints["tp2"], src)
    meta = json.loads((src / "megasparse_meta.json").read_text())
    meta["layout"]["tensor"] = 1  # the files were written by two TP ranks
    (src / "megasparse_meta.json").write_text(json.dumps(meta))
    run_helpers.reseal(src)
    line = _one_error_line(_run(src, tmp_path / "out", "--to", "megasparse"))
    assert "TP=1" in line and "disagree" in line


def test_unknown_tensor_name_is_one_line(checkpoints, tmp_path):
    src = tmp_path / "global_step1"
    shutil.copytree(checkpoints["single"], src)
    path = src / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    state = torch.load(path, weights_only=False)  # our own test file: rewritten with one name changed
    mapping = state["optimizer_state_dict"]["param_slice_mappings"][1]
    mapping["model.layers.0.attn.qkv_proj.weight"] = mapping.pop("model.layers.0.attn.q_proj.weight")
    torch.save(state, path)
    run_helpers.reseal(src)
    line = _one_error_line(_run(src, tmp_path / "out", "--to", "megasparse"))
    assert "'model.layers.0.attn.qkv_proj.weight' is not a parameter" in line


def test_existing_output_needs_overwrite_and_a_failed_overwrite_keeps_it(checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    line = _one_error_line(_run(checkpoints["single"], out, "--to", "megasparse"))
    assert "already exists" in line and "--overwrite" in line
    broken = tmp_path / "global_step1"
    shutil.copytree(checkpoints["dp2z1"], broken)
    (broken / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    _one_error_line(_run(broken, out, "--to", "megasparse", "--overwrite"))
    assert (out / "keep.txt").read_text() == "earlier result"  # untouched by the failed conversion
    assert not list(tmp_path.glob("out.tmp-*")) and not list(tmp_path.glob("out.old-*"))
    proc = _run(checkpoints["single"], out, "--to", "megasparse", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "keep.txt").exists() and (out / "latest").exists()


def test_a_target_layout_the_model_cannot_take_is_one_line(checkpoints, tmp_path):
    line = _one_error_line(_run(checkpoints["single"], tmp_path / "out", "--to", "megasparse", "--tp", "3"))
    assert "TP=3" in line and "num_heads=4 is not divisible by parallel.tensor=3" in line
    assert not (tmp_path / "out").exists()


def test_help_has_examples_and_the_command_is_listed():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=run_helpers.run_env()
    )
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--to megasparse --tp 1 --pp 1" in proc.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "megasparse", "--help"], capture_output=True, text=True, env=run_helpers.run_env()
    )
    assert "convert" in listing.stdout and "tools/convert_checkpoint.py" in listing.stdout

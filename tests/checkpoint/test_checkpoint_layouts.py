"""The checkpoint reader consolidates every parallel layout into the one-process model.

The tiny config is trained one step in one process, with TP2, PP2 and TP2×PP2 through the real
deepspeed launcher (same seed, fp32, same data), checkpointing after the step. The layouts start
from the same full model and see the same samples, so after one step their weights agree with
the one-process run up to float rounding — except where Adam's first step, ≈ lr·sign(g),
flips on a gradient that is ≈ 0 and differs in rounding. A tiny learning rate bounds those
flips, so the consolidated models' logits must match the one-process model's within ~1e-5.
A wrong shard order or dimension would move whole rows by the init scale (~0.2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import run_helpers
import torch
from sparse_fixtures import one_thread  # noqa: F401

from megasparse.checkpoint.engine import CheckpointError
from megasparse.checkpoint.reader import list_checkpoints, load_model, load_state_dict

REPO = Path(__file__).resolve().parents[2]
LR = 1e-5  # Adam's first step moves a weight by ≤ ~4·LR (µP matrices get lr × 4)

LAYOUTS = {
    "single": (0, {}),
    "tp2": (2, {"tensor": 2}),
    "pp2": (2, {"pipeline": 2}),
    "tp2pp2": (4, {"tensor": 2, "pipeline": 2}),
    "zero3": (2, {"zero_stage": 3}),
}


@pytest.fixture(scope="module")
def checkpoints(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """One-step checkpoint folders of every layout, trained concurrently (they are tiny)."""
    root = tmp_path_factory.mktemp("layouts")

    def train(name: str) -> Path:
        nproc, parallel = LAYOUTS[name]
        cfg = run_helpers.write_run_config(
            root / f"{name}.yaml",
            tiny_corpus,
            train={"steps": 1, "eval_interval": 0, "optimizer": {"lr": LR}},
            sparsity={"cett_interval": 0},
            parallel={"zero_stage": 1, **parallel},
            checkpoint={"dir": str(root / name / "ckpt"), "interval": 1, "keep_last": 1},
            logging={"dir": str(root / name / "tb"), "interval": 1},
        )
        run_helpers.run_train(cfg, launcher=run_helpers.deepspeed_launcher(nproc) if nproc else None)
        return root / name / "ckpt" / "global_step1"

    with ThreadPoolExecutor(len(LAYOUTS)) as pool:
        folders = dict(zip(LAYOUTS, pool.map(train, LAYOUTS)))
    folders["corpus_valid"] = Path(tiny_corpus["valid"])
    return folders


@pytest.fixture(scope="module")
def reference(checkpoints):
    return load_model(checkpoints["single"])


def _tokens() -> torch.Tensor:
    return torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(3))  # [b, s]


@pytest.mark.parametrize("layout", ["tp2", "pp2", "tp2pp2"])
def test_consolidated_model_matches_one_process(checkpoints, reference, layout):
    meta = json.loads((checkpoints[layout] / "megasparse_meta.json").read_text())["layout"]
    assert (meta["tensor"], meta["pipeline"]) == {"tp2": (2, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}[layout]
    model = load_model(checkpoints[layout])
    ref_state, state = reference.state_dict(), model.state_dict()
    assert state.keys() == ref_state.keys()
    for name, ref in ref_state.items():
        assert state[name].shape == ref.shape, name
        assert (state[name] - ref).abs().max() <= 10 * LR, name
    tokens = _tokens()
    with torch.no_grad():
        expected, got = reference(tokens), model(tokens)  # [b, s, V]
    assert got.shape == expected.shape
    # Measured: TP layouts 6.7e-6 (logits up to ~13, a few ulps), PP2 exactly equal.
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def test_tp_shards_are_joined_along_the_partition_dim(checkpoints):
    """The TP2 state dict is exactly its two shards, concatenated along each layer's split dim."""
    full = load_state_dict(list_checkpoints(checkpoints["tp2"])[0])
    shards = [
        torch.load(checkpoints["tp2"] / f"mp_rank_{r:02d}_model_states.pt", map_location="cpu", weights_only=True)[
            "module"
        ]
        for r in range(2)
    ]
    expectations = {
        "embed.weight": 0,
        "layers.1.attn.q_proj.weight": 0,
        "layers.1.attn.o_proj.weight": 1,
        "layers.0.mlp.up_proj.weight": 0,
        "layers.0.mlp.down_proj.weight": 1,
    }
    for name, dim in expectations.items():
        halves = [s["model." + name] for s in shards]
        assert torch.equal(full[name], torch.cat(halves, dim=dim)), name
    assert torch.equal(full["final_norm.weight"], shards[0]["model.final_norm.weight"])  # replicated


def test_zero3_checkpoint_is_refused_clearly(checkpoints):
    with pytest.raises(CheckpointError, match=r"ZeRO-3.*zero_to_fp32\.py"):
        load_model(checkpoints["zero3"])


def test_measure_tool_runs_on_a_tp2_checkpoint_dir(checkpoints, tmp_path):
    run_dir = checkpoints["tp2"].parent  # a run's checkpoint directory, not the folder itself
    cmd = [
        sys.executable,
        str(REPO / "tools" / "measure_sparsity.py"),
        str(run_dir),
        "--data",
        str(checkpoints["corpus_valid"]),
        "--seq-length",
        "32",
        "--batches",
        "2",
        "--micro-batch",
        "2",
        "--method",
        "cett",
        "--tolerance",
        "1e-2",
        "--sidecar",
        "none",
        "--out",
        str(tmp_path / "m"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**run_helpers.run_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / "m" / "measurements.json").read_text())
    assert [r["step"] for r in records] == [1]
    r = records[0]
    assert 0 < r["cett"] < 1 and len(r["layer_activation_ratio"]) == 2
    assert 0 < r["activation_ratio"] < 1


def test_measure_tool_refuses_zero3_in_one_line(checkpoints, tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "tools" / "measure_sparsity.py"),
        str(checkpoints["zero3"]),
        "--data",
        str(checkpoints["corpus_valid"]),
        "--seq-length",
        "32",
        "--batches",
        "1",
        "--micro-batch",
        "1",
        "--out",
        str(tmp_path / "m"),
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=run_helpers.run_env(), capture_output=True, text=True, timeout=300)
    err = [line for line in proc.stderr.splitlines() if "measure_sparsity.py: error" in line]
    assert proc.returncode == 2 and len(err) == 1 and "zero_to_fp32.py" in err[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("tied", [True, False])
def test_partition_dims_come_from_the_tensor_parallel_layers(tied):
    from megasparse.checkpoint.shards import partition_dims
    from megasparse.config import ModelConfig

    cfg = ModelConfig(hidden_size=64, num_layers=2, ffn_size=160, head_dim=16, vocab_size=300, tie_embeddings=tied)
    dims = partition_dims(cfg)
    expected = {"embed.weight": 0}
    for i in range(2):
        expected.update({f"layers.{i}.attn.{p}_proj.weight": 0 for p in "qkv"})
        expected.update(
            {
                f"layers.{i}.mlp.gate_proj.weight": 0,
                f"layers.{i}.mlp.up_proj.weight": 0,
                f"layers.{i}.attn.o_proj.weight": 1,
                f"layers.{i}.mlp.down_proj.weight": 1,
            }
        )
    if not tied:
        expected["lm_head.weight"] = 0  # column-parallel over the vocabulary
    assert dims == expected  # norms are replicated: absent


def test_pipeline_pieces_map_to_plain_prefixes():
    from megasparse.checkpoint.shards import pipeline_piece_prefix

    assert [pipeline_piece_prefix(i, 3) for i in range(5)] == ["", "layers.0.", "layers.1.", "layers.2.", ""]
    with pytest.raises(CheckpointError, match="pieces 0..4"):
        pipeline_piece_prefix(5, 3)

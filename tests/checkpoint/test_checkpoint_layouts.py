"""The checkpoint reader consolidates every parallel layout into the one-process model.

The tiny config is trained one step in one process, with TP2, PP2, TP2×PP2 and DP2 under ZeRO
1, 2 and 3 through the real deepspeed launcher (same seed, fp32, same data), checkpointing after
the step (conftest.py). The layouts start
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
from pathlib import Path

import pytest
import run_helpers
import torch
from layout_runs import LR
from sparse_fixtures import one_thread  # noqa: F401

from megasparse.checkpoint.engine import CheckpointError
from megasparse.checkpoint.reader import list_checkpoints, load_model, load_state_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(checkpoints):
    return load_model(checkpoints["single"])


def _tokens() -> torch.Tensor:
    return torch.randint(0, 500, (2, 32), generator=torch.Generator().manual_seed(3))  # [b, s]


EXPECTED_LAYOUT = {  # (TP, PP, DP, ZeRO stage)
    "tp2": (2, 1, 1, 1),
    "pp2": (1, 2, 1, 1),
    "tp2pp2": (2, 2, 1, 1),
    "dp2z1": (1, 1, 2, 1),
    "dp2z2": (1, 1, 2, 2),
    "dp2z3": (1, 1, 2, 3),
}


@pytest.mark.parametrize("layout", list(EXPECTED_LAYOUT))
def test_consolidated_model_matches_one_process(checkpoints, reference, layout):
    meta = json.loads((checkpoints[layout] / "megasparse_meta.json").read_text())["layout"]
    assert (meta["tensor"], meta["pipeline"], meta["data"], meta["zero_stage"]) == EXPECTED_LAYOUT[layout]
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


@pytest.mark.parametrize("layout", ["single", *EXPECTED_LAYOUT])
def test_masters_and_module_copy_agree_in_fp32(checkpoints, layout):
    """fp32 training: the optimizer's masters are the module's weights, bit for bit (ZeRO-3 keeps
    no module copy in its files: both come from the masters)."""
    info = list_checkpoints(checkpoints[layout])[0]
    masters, module = load_state_dict(info, master=True), load_state_dict(info, master=False)
    assert masters.keys() == module.keys()
    for name in masters:
        assert masters[name].dtype == torch.float32 and torch.equal(masters[name], module[name]), name


def test_bf16_training_reads_fp32_masters_by_default_and_the_bf16_copy_on_request(checkpoints):
    info = list_checkpoints(checkpoints["bf16"])[0]
    masters, module = load_state_dict(info), load_state_dict(info, master=False)
    name = "layers.0.mlp.up_proj.weight"
    assert masters[name].dtype == torch.float32 and module[name].dtype == torch.bfloat16
    assert not torch.equal(masters[name], module[name].float())  # the masters keep what bf16 drops
    for name in masters:  # the module copy is the masters rounded to bf16
        assert torch.equal(masters[name].bfloat16(), module[name]), name
    assert next(load_model(info).parameters()).dtype == torch.float32


@pytest.mark.parametrize("layout", ["single", *EXPECTED_LAYOUT])
def test_every_checkpoint_records_its_layout(checkpoints, layout):
    record = json.loads((checkpoints[layout] / "megasparse_layout.json").read_text())
    tp, pp, dp, zero = EXPECTED_LAYOUT.get(layout, (1, 1, 1, 1))
    assert (record["tensor"], record["pipeline"], record["data"], record["zero_stage"]) == (tp, pp, dp, zero)
    assert record["vocab_size"] == 512 and record["padded_vocab_size"] == 512  # the tiny tokenizer: 512 ids
    assert len(record["ranks"]) == tp * pp * dp
    tensors = record["tensors"]
    assert tensors["embed.weight"]["shape"] == [512, 64] and tensors["embed.weight"]["split_dim"] == 0
    assert tensors["layers.0.attn.o_proj.weight"]["split_dim"] == 1
    assert tensors["final_norm.weight"]["split_dim"] is None  # replicated
    assert tensors["layers.1.mlp.up_proj.weight"]["pipeline_pieces"] == [2]
    for rank in record["ranks"]:  # every engine name maps to a plain name the model has
        assert set(rank["names"].values()) <= set(tensors)
    if pp > 1:
        stage_names = [set(r["names"]) for r in record["ranks"]]
        assert any("tied_modules.embed.embed.weight" in names for names in stage_names)


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


@pytest.mark.parametrize("layout", ["tp2", "dp2z3"])
def test_measure_tool_runs_on_a_checkpoint_dir(checkpoints, tmp_path, layout):
    run_dir = checkpoints[layout].parent  # a run's checkpoint directory, not the folder itself
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

"""Hugging Face -> ours: random tiny models made with transformers, imported, the same logits.

Llama (tied and untied), Mistral with grouped-query attention, Qwen2 with GQA and non-zero q/k/v
biases, and Granite with µP-style multipliers (its attention multiplier folded into q_proj).
What cannot be represented is refused in one line with exit status 2. ``measure --hf`` reads a
folder directly, and ``checkpoint.init_from`` trains from an import in one process and in TP2
under the real deepspeed launcher.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import run_helpers
import torch
from hf_helpers import convert, tokens
from sparse_fixtures import one_thread  # noqa: F401

from megasparse.checkpoint import load_model

transformers = pytest.importorskip("transformers")

SHAPE = dict(
    vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, head_dim=16
)
SHAPE["max_position_embeddings"] = 128


def _model(kind: str, **overrides):
    t = transformers
    classes = {
        "llama": (t.LlamaConfig, t.LlamaForCausalLM),
        "mistral": (t.MistralConfig, t.MistralForCausalLM),
        "qwen2": (t.Qwen2Config, t.Qwen2ForCausalLM),
        "granite": (t.GraniteConfig, t.GraniteForCausalLM),
    }
    config_class, model_class = classes[kind]
    torch.manual_seed(0)
    model = model_class(config_class(**{**SHAPE, **overrides})).eval()
    with torch.no_grad():  # transformers initialises biases and norms to constants; make them count
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


MODELS = {
    "llama": ("llama", {"num_key_value_heads": 4}),
    "llama-tied": ("llama", {"tie_word_embeddings": True, "hidden_act": "relu"}),
    "mistral-gqa": ("mistral", {"num_key_value_heads": 2, "sliding_window": None}),
    "qwen2-gqa-bias": ("qwen2", {"num_key_value_heads": 1}),
    "granite": (
        "granite",
        {
            "num_key_value_heads": 2,
            "embedding_multiplier": 12.0,
            "residual_multiplier": 0.22,
            "logits_scaling": 8.0,
            "attention_multiplier": 0.0078125,
        },
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_imported_model_computes_the_same_logits(name, tmp_path):
    kind, overrides = MODELS[name]
    hf = _model(kind, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    assert convert(tmp_path / "hf", tmp_path / "ours", "--to", "megasparse", "--no-progress") == 0
    ours = load_model(tmp_path / "ours")
    assert ours.config.attention_bias == (kind == "qwen2")
    assert ours.config.tie_embeddings == hf.config.tie_word_embeddings
    ids = tokens()
    with torch.no_grad():
        theirs, mine = hf(ids).logits, ours(ids)
    assert mine.shape == theirs.shape
    if kind == "granite":  # the attention multiplier is folded into q_proj: one rounding
        assert float((mine - theirs).abs().max()) <= 1e-5 * float(theirs.abs().max())
    else:  # unit scales: the same operations in the same order
        assert torch.equal(mine, theirs)


def test_relufication_changes_only_the_activation(tmp_path):
    _model("llama").save_pretrained(tmp_path / "hf")
    assert convert(tmp_path / "hf", tmp_path / "ours", "--to", "megasparse", "--activation", "relu") == 0
    meta = json.loads((tmp_path / "ours" / "megasparse_meta.json").read_text())
    assert meta["model"]["activation"] == "relu" and meta["imported_from"]["activation"]["source"] == "silu"


def _refusal(tmp_path: Path, capsys, message: str) -> None:
    capsys.readouterr()
    assert convert(tmp_path / "hf", tmp_path / "ours", "--to", "megasparse", "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "ours").exists()


def test_rope_scaling_is_refused(tmp_path, capsys):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    rope.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    _model("llama", rope_parameters=rope).save_pretrained(tmp_path / "hf")
    _refusal(tmp_path, capsys, "rope type 'llama3'")


def test_sliding_window_shorter_than_context_is_refused(tmp_path, capsys):
    _model("mistral", sliding_window=16).save_pretrained(tmp_path / "hf")
    _refusal(tmp_path, capsys, "sliding-window attention")


def test_nonzero_output_bias_is_refused(tmp_path, capsys):
    _model("llama", attention_bias=True).save_pretrained(tmp_path / "hf")
    _refusal(tmp_path, capsys, "o_proj.bias' is a non-zero bias")


def test_missing_shard_and_unknown_tensor_are_refused(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    hf = _model("llama")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shard = tmp_path / "hf" / sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(str(shard))
    shard.unlink()
    _refusal(tmp_path, capsys, "missing shard")
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    _refusal(tmp_path, capsys, "'model.layers.0.mlp.extra_proj.weight' has no counterpart")


def test_unsupported_model_type_is_refused(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    _refusal(tmp_path, capsys, "model_type 'gpt2' is not supported")


def test_measure_reads_a_hugging_face_folder_and_its_import(tiny_corpus, tmp_path):
    from megasparse.sparsity.measure import fixed_batches

    hf = _model("llama", hidden_act="relu", tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    assert convert(tmp_path / "hf", tmp_path / "ours", "--to", "megasparse", "--no-progress") == 0
    common = ["--data", tiny_corpus["valid"], "--seq-length", "32", "--batches", "2", "--micro-batch", "2"]
    common += ["--method", "zero", "--no-progress"]
    records = []
    for source, out in ((["--hf", tmp_path / "hf"], "m"), ([tmp_path / "ours"], "m2")):
        proc = subprocess.run(
            [sys.executable, "tools/measure_sparsity.py", *map(str, [*source, *common, "--out", tmp_path / out])],
            cwd=run_helpers.REPO,
            env=run_helpers.run_env(),
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        records.append(json.loads((tmp_path / out / "measurements.json").read_text())[0])
    record, imported = records
    assert imported["dense_loss"] == record["dense_loss"]  # the imported checkpoint measures the same
    batches = fixed_batches([tiny_corpus["valid"]], 32, 2, 2, None)
    with torch.no_grad():  # transformers' logits on the same batches [b, s+1]: inputs b[:, :-1], targets b[:, 1:]
        losses = [
            float(torch.nn.functional.cross_entropy(hf(b[:, :-1]).logits.flatten(0, 1), b[:, 1:].flatten()))
            for b in batches
        ]
    assert abs(record["dense_loss"] - sum(losses) / len(losses)) < 1e-4
    assert 0.0 < record["activation_ratio"] < 1.0


def test_training_starts_from_an_import_in_any_layout(tiny_corpus, tmp_path):
    """One step at a vanishing learning rate from an imported Qwen2 (biases, GQA) in 1, TP2 and PP2:
    the saved weights are the imported ones, and every layout computes the same first loss."""
    from concurrent.futures import ThreadPoolExecutor

    from megasparse import tags

    hf = _model("qwen2", num_key_value_heads=2, tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    assert convert(tmp_path / "hf", tmp_path / "ours", "--to", "megasparse", "--activation", "relu") == 0
    imported = load_model(tmp_path / "ours").state_dict()
    layouts = {"single": (0, {}), "tp2": (2, {"tensor": 2}), "pp2": (2, {"pipeline": 2})}

    def train(name: str) -> tuple[dict, float]:
        nproc, parallel = layouts[name]
        run = tmp_path / name
        cfg = run_helpers.write_run_config(
            run / "config.yaml",
            tiny_corpus,
            train={"steps": 1, "eval_interval": 0, "optimizer": {"lr": 1e-9}},
            sparsity={"cett_interval": 0},
            parallel={"zero_stage": 1, **parallel},
            checkpoint={"dir": str(run / "ckpt"), "interval": 1, "init_from": str(tmp_path / "ours")},
            logging={"dir": str(run / "tb"), "interval": 1},
        )
        proc = run_helpers.run_train(cfg, launcher=run_helpers.deepspeed_launcher(nproc) if nproc else None)
        assert "checkpoint.init_from" in proc.stdout + proc.stderr
        loss = run_helpers.scalars(run / "tb")[tags.TRAIN_LOSS][0][1]
        return load_model(run / "ckpt" / "global_step1").state_dict(), loss

    for name in layouts:
        (tmp_path / name).mkdir()
    with ThreadPoolExecutor(len(layouts)) as pool:
        results = dict(zip(layouts, pool.map(train, layouts)))
    for name, (state, loss) in results.items():
        assert state.keys() == imported.keys()
        for key in imported:
            assert float((state[key] - imported[key]).abs().max()) < 1e-6, (name, key)
        assert abs(loss - results["single"][1]) < 1e-5, (name, loss)


def test_init_from_refuses_a_run_config_that_contradicts_the_checkpoint(tiny_corpus, tmp_path):
    _model("llama", hidden_size=32, head_dim=8, hidden_act="relu").save_pretrained(tmp_path / "hf")
    assert convert(tmp_path / "hf", tmp_path / "ours", "--to", "megasparse", "--no-progress") == 0
    (tmp_path / "run").mkdir()
    cfg = run_helpers.write_run_config(
        tmp_path / "run" / "config.yaml",
        tiny_corpus,
        train={"steps": 1, "eval_interval": 0},
        sparsity={"cett_interval": 0},
        checkpoint={"dir": str(tmp_path / "run" / "ckpt"), "init_from": str(tmp_path / "ours")},
    )
    proc = run_helpers.run_train(cfg, check=False)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "model.head_dim=16 in the run config" in err[0] and "has 8" in err[0], err


def test_an_import_refuses_a_target_layout(tmp_path, capsys):
    _model("llama").save_pretrained(tmp_path / "hf")
    capsys.readouterr()
    assert convert(tmp_path / "hf", tmp_path / "ours", "--to", "megasparse", "--tp", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint.init_from" in err, err

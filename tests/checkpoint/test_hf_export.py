"""Ours -> Hugging Face: every format loaded by the real transformers computes our logits.

A random tiny model of ours (norm weights away from 1, so a wrong fold shows) is exported by
``megasparse convert`` and loaded with ``AutoModelForCausalLM``; logits are compared here, not
only by ``--verify``. Round trips back through the importer are bit-exact for hf-minicpm and
hf-granite (no folds) and within one fp32 rounding per weight for hf-llama.
"""

from __future__ import annotations

import json

import pytest
import torch
from hf_helpers import convert, hf_logits, tiny_checkpoint, tokens, within_gate
from sparse_fixtures import one_thread  # noqa: F401

from megasparse.checkpoint import load_model
from megasparse.checkpoint.hf_formats import export_plan
from megasparse.checkpoint.hf_verify import VerificationError, verify_export
from megasparse.sparsity.sidecar import read_sidecar, sidecar_from_measurement, write_sidecar

pytest.importorskip("transformers")

TAU = torch.tensor([0.3, 0.7])  # layer thresholds of the sidecar written beside the checkpoint


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_corpus):
    """Tied and untied tiny checkpoints (the tied one with a sidecar) and their models."""
    root = tmp_path_factory.mktemp("export")
    tied = tiny_checkpoint(root / "tied", tiny_corpus["tokenizer"])
    untied = tiny_checkpoint(root / "untied", tiny_corpus["tokenizer"], tie_embeddings=False)
    frequency = torch.rand(2, 160, generator=torch.Generator().manual_seed(0))
    neuron = torch.rand(2, 160, generator=torch.Generator().manual_seed(1))
    write_sidecar(root / "tied", sidecar_from_measurement(TAU, neuron, frequency, {"method": "cett"}))
    return {"root": root, "tied": (root / "tied", tied), "untied": (root / "untied", untied)}


CASES = {
    "llama": ("tied", "hf-llama", [], "LlamaForCausalLM"),
    "llama-untie": ("tied", "hf-llama", ["--untie"], "LlamaForCausalLM"),
    "llama-untied-model": ("untied", "hf-llama", [], "LlamaForCausalLM"),
    "granite": ("tied", "hf-granite", [], "GraniteForCausalLM"),
    "minicpm": ("tied", "hf-minicpm", [], "MiniCPMForCausalLM"),
    "minicpm-vllm": ("tied", "hf-minicpm", ["--vllm"], "MiniCPMForCausalLM"),
    "granite-untied-model": ("untied", "hf-granite", [], "GraniteForCausalLM"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_computes_our_logits_in_transformers(source, case, tmp_path):
    which, fmt, flags, architecture = CASES[case]
    folder, model = source[which]
    out = tmp_path / "hf"
    assert convert(folder, out, "--to", fmt, "--verify", "32", "--no-progress", *flags) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert config["tie_word_embeddings"] == (which == "tied" and "--untie" not in flags)
    ids = tokens()
    with torch.no_grad():
        ours = model(ids)
    theirs = hf_logits(out, ids)
    assert within_gate(ours, theirs), float((ours - theirs).abs().max())
    if fmt != "hf-llama":  # nothing folded: the same operations in the same order
        assert torch.equal(ours, theirs)
    record = json.loads((out / "megasparse_export.json").read_text())
    assert record["verification"]["fp32"]["passed"] and record["source"]["step"] == 0
    assert record["dtype"] == "float32" and record["padded_vocab_size"] == 512
    if "--vllm" in flags:
        assert (config["hidden_act"], config["hidden_act_param"]) == ("fatrelu", 0.0)


@pytest.mark.parametrize("fmt", ["hf-minicpm", "hf-granite", "hf-llama"])
def test_round_trip_through_hugging_face(source, fmt, tmp_path):
    folder, model = source["tied"]
    assert convert(folder, tmp_path / "hf", "--to", fmt, "--no-progress") == 0
    assert convert(tmp_path / "hf", tmp_path / "back", "--to", "megasparse", "--no-progress") == 0
    back = load_model(tmp_path / "back")
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    ids = tokens()
    with torch.no_grad():
        logits, logits_back = model(ids), back(ids)
    if fmt in ("hf-minicpm", "hf-granite"):
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        assert torch.equal(logits, logits_back)
    else:  # fold and unfold: one fp32 rounding each way, at most one unit in the last place
        for name in ours:
            ulp = torch.finfo(torch.float32).eps * ours[name].abs()
            assert bool(((ours[name] - theirs[name]).abs() <= ulp).all()), name
        assert within_gate(logits, logits_back)


def test_tokenizer_export_encodes_as_training_did(source, tiny_corpus, tmp_path):
    from transformers import AutoTokenizer

    from megasparse.data.bundled import iter_bundled_documents
    from megasparse.data.tokenizer import load_tokenizer

    assert convert(source["tied"][0], tmp_path / "hf", "--to", "hf-minicpm", "--no-progress") == 0
    ours = load_tokenizer(tiny_corpus["tokenizer"])
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = [doc["text"] for _, doc in zip(range(25), iter_bundled_documents("valid"))]
    texts += [" leading space", "two  spaces\n\ttab", "digits 12345", "<eod> typed as text", "naïve ☃ 漢字"]
    for text in texts:
        assert theirs(text)["input_ids"] == ours.encode(text), text[:40]  # no BOS added either
    assert theirs.eos_token == "<eod>" and theirs.convert_tokens_to_ids("<eod>") == ours.eod_id
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [ours.eos_id, ours.eod_id]


@pytest.mark.parametrize("fmt", ["hf-llama", "hf-minicpm"])
def test_sidecar_thresholds_follow_the_fold(source, fmt, tmp_path):
    folder, model = source["tied"]
    assert convert(folder, tmp_path / "hf", "--to", fmt, "--no-progress") == 0
    exported, original = read_sidecar(tmp_path / "hf"), read_sidecar(folder)
    c = model.layers[0].residual_scale if fmt == "hf-llama" else 1.0
    assert torch.allclose(exported.layer_thresholds, TAU * c)
    assert torch.equal(exported.neuron_thresholds, original.neuron_thresholds)  # on |h_i|: unchanged


def test_shards_and_index_cover_every_tensor(source, tmp_path):
    from safetensors import safe_open

    assert convert(source["tied"][0], tmp_path / "hf", "--to", "hf-llama", "--max-shard-size", "0.00004") == 0
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[-1].endswith(f"-of-{len(files):05d}.safetensors")
    seen, size = {}, 0
    for file in files:
        with safe_open(str(tmp_path / "hf" / file), framework="pt") as f:
            for name in f.keys():
                seen[name] = file
                size += f.get_tensor(name).numel() * 4
    assert seen == index["weight_map"] and size == index["metadata"]["total_size"]
    assert not list((tmp_path / "hf").glob("*.partial"))


@pytest.mark.parametrize("flags", [[], ["--untie"]])
def test_bf16_export_verifies_against_its_own_rounding(source, flags, tmp_path):
    argv = [source["tied"][0], tmp_path / "hf", "--to", "hf-llama", "--dtype", "bf16", "--verify", "16", *flags]
    assert convert(*argv) == 0
    record = json.loads((tmp_path / "hf" / "megasparse_export.json").read_text())
    assert record["dtype"] == "bfloat16" and record["verification"]["fp32"]["passed"]
    assert record["verification"]["rounding_vs_source"]["max_abs"] > 0  # bf16 weights moved the logits


def test_verification_fails_on_a_wrong_export(source, tmp_path):
    """The gate can fail: an export whose config.json no longer matches its weights."""
    folder, model = source["tied"]
    assert convert(folder, tmp_path / "hf", "--to", "hf-llama", "--no-progress") == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["rms_norm_eps"] = 1e-2  # a config that no longer matches the weights' model
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    plan = export_plan(model.config, "hf-llama")
    with pytest.raises(VerificationError, match="differ from ours"):
        verify_export(tmp_path / "hf", model, plan, torch.float32, 512, None, 16)


def test_refusals_are_one_line_with_exit_2(source, tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ungated", gated=False)
    cases = [
        ([tmp_path / "ungated", tmp_path / "a", "--to", "hf-llama", "--no-tokenizer"], "ungated MLP"),
        ([source["tied"][0], tmp_path / "b", "--to", "hf-granite", "--untie"], "--untie applies to hf-llama only"),
        ([source["tied"][0], source["root"], "--to", "hf-llama"], "already exists"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert convert(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob("*.tmp-*"))


def test_export_of_a_trained_run_with_its_tokenizer(tmp_path_factory, tmp_path):
    """A real run's newest checkpoint (DeepSpeed's files, fp32 masters) exported and verified."""
    from sparse_fixtures import trained_run

    run = trained_run(tmp_path_factory)
    assert convert(run["ckpt"], tmp_path / "hf", "--to", "hf-llama", "--verify", "32", "--no-progress") == 0
    record = json.loads((tmp_path / "hf" / "megasparse_export.json").read_text())
    assert record["source"]["step"] == 20 and record["source"]["tokens"] > 0
    assert record["tokenizer"]["sha256"] and (tmp_path / "hf" / "tokenizer.json").exists()
    ids = tokens()
    with torch.no_grad():
        ours = load_model(run["ckpt"] / "global_step20")(ids)
    assert within_gate(ours, hf_logits(tmp_path / "hf", ids))


def test_hugging_face_tokenizer_is_written_back_without_its_bos(source, tmp_path):
    """A run trained with a tokenizer.json whose post-processor adds BOS: the export adds none."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    from megasparse.data.tokenizer import load_tokenizer

    assert convert(source["tied"][0], tmp_path / "first", "--to", "hf-granite", "--no-progress") == 0
    hf_dir = tmp_path / "run_tokenizer"
    hf_dir.mkdir()
    tok = Tokenizer.from_file(str(tmp_path / "first" / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(hf_dir / "tokenizer.json"))
    assert tok.encode("a b").ids[0] == 1  # the source does add BOS
    argv = [source["tied"][0], tmp_path / "hf", "--to", "hf-granite", "--tokenizer", hf_dir / "tokenizer.json"]
    assert convert(*argv, "--tokenizer-type", "HuggingFaceTokenizer", "--no-progress") == 0
    ours, theirs = load_tokenizer(hf_dir / "tokenizer.json"), AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ["The loan of $12,000,000", " leading space", "two  spaces"]:
        assert theirs(text)["input_ids"] == ours.encode(text)
    assert theirs.eos_token == "<eod>"

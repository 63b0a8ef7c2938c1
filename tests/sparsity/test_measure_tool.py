"""tools/measure_sparsity.py end to end on checkpoints of a real tiny training run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from run_helpers import run_env
from sparse_fixtures import REPO, one_thread, trained_run  # noqa: F401

from megasparse.law.data import read_csv_curve, read_json_curve

TOOL = REPO / "tools" / "measure_sparsity.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def measured(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("measured")
    cmd = [
        sys.executable,
        str(TOOL),
        str(run["ckpt"]),
        "--data",
        run["valid"],
        "--seq-length",
        "32",
        "--batches",
        "2",
        "--micro-batch",
        "2",
        "--last-k",
        "2",
        "--tolerance",
        "1e-2",
        "--sidecar",
        "all",
        "--out",
        str(out),
        "--tensorboard",
        str(out / "tb"),
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_records_per_checkpoint(measured):
    out, proc = measured
    records = json.loads((out / "measurements.json").read_text())
    assert [r["step"] for r in records] == [10, 20]
    assert [r["tokens"] for r in records] == [10 * 4 * 32, 20 * 4 * 32]  # raw consumed tokens
    for r in records:
        assert r["cett"] == records[0]["cett"] and 0 < r["cett"] < 1  # one value for all (stabilising)
        assert len(r["layer_thresholds"]) == 2 and all(t > 0 for t in r["layer_thresholds"])
        assert len(r["layer_activation_ratio"]) == 2
        assert r["activation_ratio"] == pytest.approx(sum(r["layer_activation_ratio"]) / 2)
        assert 0 < r["activation_ratio"] < 1 and 0 <= r["dead_neuron_ratio"] <= 1
        assert r["dense_ppl"] == pytest.approx(2.718281828 ** r["dense_loss"], rel=1e-6)
    summary = json.loads((out / "measurement_summary.json").read_text())
    assert abs(summary["search"]["ppl_ratio"] - 1.01) < 0.01  # mean over the last 2 reaches +1%
    # stderr is a pipe, not a terminal: no tqdm frames (a progress line only every 30 s)
    assert "step       20" in proc.stdout and "\r" not in proc.stderr


def test_fit_tool_reads_the_outputs(measured):
    out, _ = measured
    records = json.loads((out / "measurements.json").read_text())
    for curve in (read_json_curve(out / "measurements.json"), read_csv_curve(out / "measurements.csv")):
        assert curve.tokens_b.tolist() == pytest.approx([r["tokens"] / 1e9 for r in records])
        assert curve.activation_ratio.tolist() == pytest.approx([r["activation_ratio"] for r in records])


def test_per_checkpoint_files(measured, run):
    from safetensors.torch import load_file

    from megasparse.sparsity.sidecar import read_sidecar

    out, _ = measured
    records = {r["step"]: r for r in json.loads((out / "measurements.json").read_text())}
    for step in (10, 20):
        t = load_file(str(out / f"neuron_frequency_step{step}.safetensors"))
        assert tuple(t["frequency"].shape) == (2, 160)
        dead = float((t["frequency"] < 0.001).double().mean())
        assert dead == pytest.approx(records[step]["dead_neuron_ratio"])
        assert float(t["frequency"].mean(1).mean()) == pytest.approx(records[step]["activation_ratio"], rel=1e-5)
        table = json.loads((out / f"token_activation_step{step}.json").read_text())
        assert sum(table["count"]) == 2 * 2 * 32 and all(0 <= v <= 1 for v in table["mean_activation_ratio"])
        car = read_sidecar(out / f"sidecar_step{step}")
        assert car.layer_thresholds.tolist() == pytest.approx(records[step]["layer_thresholds"])
        assert car.info["checkpoint"]["step"] == step


def test_tensorboard_scalars(measured):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = measured
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {
        "sparsity/cett/value",
        "sparsity/cett/ppl_ratio",
        "sparsity/cett/activation_ratio",
        "sparsity/cett/layer_00/activation_ratio",
        "sparsity/cett/layer_01/activation_ratio",
    } <= tags
    assert [e.step for e in acc.Scalars("sparsity/cett/activation_ratio")] == [10, 20]


def test_fat_baseline_in_process(run, tmp_path, capsys):
    from megasparse.cli.measure import main

    ckpt = run["ckpt"] / "global_step20"
    assert (
        main(
            [
                str(ckpt),
                "--data",
                run["valid"],
                "--batches",
                "1",
                "--micro-batch",
                "2",
                "--method",
                "fat",
                "--arg",
                "0.05",
                "--out",
                str(tmp_path),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    (r,) = json.loads((tmp_path / "measurements.json").read_text())
    assert r["method"] == "fat" and r["cett"] is None and r["layer_thresholds"] is None and r["step"] == 20
    assert not list(tmp_path.glob("sidecar_*"))


@pytest.mark.parametrize("case", ["missing_ckpt", "empty_run", "missing_data", "no_arg"])
def test_bad_inputs_one_line_exit_2(case, run, tmp_path, capsys):
    from megasparse.cli.measure import main

    ckpt, data, extra = str(run["ckpt"]), run["valid"], []
    if case == "missing_ckpt":
        ckpt = str(tmp_path / "nope")
    elif case == "empty_run":
        (tmp_path / "empty").mkdir()
        ckpt = str(tmp_path / "empty")
    elif case == "missing_data":
        data = str(tmp_path / "nodata")
    else:
        extra = ["--method", "topk"]
    assert main([ckpt, "--data", data, "--out", str(tmp_path / "o"), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("megasparse measure: error:")
    assert {
        "missing_ckpt": "nope",
        "empty_run": "no complete checkpoints",
        "missing_data": "nodata.idx",
        "no_arg": "--arg",
    }[case] in err


def test_help_has_examples():
    proc = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, env=run_env())
    assert proc.returncode == 0 and "examples:" in proc.stdout and "megasparse fit" in proc.stdout


def test_reader_reports_a_missing_tensor_parallel_shard(run, tmp_path, capsys):
    # Sharded layouts load (tests/checkpoint/test_checkpoint_layouts.py); one whose metadata (and
    # layout record) claim TP2 but holds only TP rank 0's files gives one clear error line naming
    # a missing file of TP rank 1 (the optimizer shard: the fp32 masters are read from it).
    import shutil

    from megasparse.cli.measure import main

    ckpt = tmp_path / "global_step20"
    shutil.copytree(run["ckpt"] / "global_step20", ckpt)
    for name in ("megasparse_meta.json", "megasparse_layout.json"):
        data = json.loads((ckpt / name).read_text())
        (data["layout"] if name == "megasparse_meta.json" else data)["tensor"] = 2
        (ckpt / name).write_text(json.dumps(data))
    from megasparse.checkpoint import manifest  # edited on purpose: record the edit

    manifest.write_manifest(ckpt, manifest.describe_files(ckpt, manifest.files_to_record(ckpt)))
    assert (
        main(
            [
                str(ckpt),
                "--data",
                run["valid"],
                "--batches",
                "1",
                "--micro-batch",
                "1",
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert re.search(r"mp_rank_01_(optim|model)_states\.pt: missing", err) and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_hf_tokenized_data_and_progress_lines(run, tmp_path, capsys, monkeypatch):
    """Data tokenized by a Hugging Face tokenizer measured with its EOD; progress as log lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from megasparse.cli.measure import main
    from megasparse.data.preprocess import preprocess

    hf = tmp_path / "hf"
    hf.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = [json.loads(line)["text"] for line in (run["root"] / "train.jsonl").read_text().splitlines()]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)  # 400 ids: within the model's 512
    tok.save(str(hf / "tokenizer.json"))
    # Documents without an EOD: the measurement's batches add the tokenizer's own between them.
    preprocess([str(run["root"] / "valid.jsonl")], str(tmp_path / "v"), str(hf), progress=False)
    monkeypatch.setenv("MEGASPARSE_PROGRESS_INTERVAL", "0")
    args = [str(run["ckpt"]), "--data", str(tmp_path / "v_text_document"), "--batches", "1", "--micro-batch", "2"]
    args += ["--tokenizer-model", str(hf), "--tokenizer-type", "HuggingFaceTokenizer", "--last-k", "2"]
    assert main([*args, "--tolerance", "0.1", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("CETT search on 2 ckpt: 1 trial / 4 trial") for line in err)
    assert any(line.startswith("measure: 2 ckpt / 2 ckpt (100.0%)") for line in err)
    assert len(json.loads((tmp_path / "o" / "measurements.json").read_text())) == 2

"""What a run tells its user: the banner, eval and ETA lines, the summary, the resolved config in
TensorBoard and the log dir, the same tags in an offline W&B run, and errors printed once."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from run_helpers import REPO, deepspeed_launcher, run_env, run_train, write_run_config


def read_wandb_records(run_file: Path) -> list:
    """Every record of an offline W&B run file (``run-*.wandb``): a 7-byte header (``:W&B``, magic,
    version), then LevelDB-style 32 KiB blocks of records (crc32, length, type; types 1 = full,
    2/3/4 = first/middle/last piece), each a serialized ``wandb.proto.wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file}: not a W&B run file"
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        if length == 0 and kind == 0:
            pos += room
            continue
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def wandb_history(run_dir: Path) -> tuple[dict[str, list[int]], dict]:
    """({key: [steps]}, {config key: value}) of the one offline run under ``run_dir``."""
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    history: dict[str, list[int]] = {}
    config: dict = {}
    for record in read_wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            # A histogram is nested: [tag, "values" / "bins" / "_type"].
            items = {i.key or i.nested_key[0]: i.value_json for i in record.history.item}
            step = int(json.loads(items.pop("_step")))
            for key in items:
                if not key.startswith("_"):
                    history.setdefault(key, []).append(step)
        elif kind in ("run", "config"):  # the config comes with the run record, updates in config records
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates})
    return history, config


@pytest.fixture(scope="module")
def logged_run(tiny_corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("console")
    cfg = write_run_config(
        d / "run.yaml",
        tiny_corpus,
        logging={"dir": str(d / "tb"), "interval": 5, "wandb": {"project": "megasparse-tests", "mode": "offline"}},
    )
    return d, run_train(cfg, timeout=900)


def test_banner_eval_eta_and_summary_on_the_console(logged_run, tiny_corpus):
    d, proc = logged_run
    out = proc.stdout
    for start in (
        "megasparse 0.1.0 | run run | 1 process on cpu, fp32",
        "parameters  ",
        "layout      1 process = TP 1",
    ):
        assert start in out
    assert "batch       4 sequences × 32 tokens = 128 tokens per step (micro-batch 2 × DP 1 × accumulation 2)" in out
    # 20 steps × 128 tokens of a 611,426-token corpus
    assert f"data        {tiny_corpus['train']}: 611,426 tokens; the run reads 0.00419 epochs of it" in out
    assert "tokens; the run reads" in out and "start       step 0 (a new run)" in out
    assert "W&B megasparse-tests/run (offline)" in out
    eval_lines = [line for line in out.splitlines() if line.startswith("eval ")]
    assert len(eval_lines) == 2 and " | loss " in eval_lines[0] and " | ppl " in eval_lines[0]
    assert "cett calibration at step 10:" in out
    steps = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(steps) == 4 and all(" | eta " in line for line in steps)
    assert "done        step 20/20, 2,560 tokens" in out and "final       train loss " in out
    assert "Traceback" not in proc.stderr and "wandb:" not in proc.stdout + proc.stderr


def test_resolved_config_in_the_log_dir_and_tensorboard(logged_run):
    d, _ = logged_run
    saved = yaml.safe_load((d / "tb" / "config.yaml").read_text())
    assert saved["model"]["vocab_size"] == 512  # resolved from the tokenizer, not left empty
    assert saved["train"]["steps"] == 20 and saved["logging"]["wandb"]["mode"] == "offline"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(d / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    (text,) = acc.Tensors("config/text_summary")
    assert "vocab_size: 512" in text.tensor_proto.string_val[0].decode()
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.steps"].number_value == 20
    assert start.hparams["model.activation"].string_value == "relu"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"train/loss", "eval/loss"}


def test_wandb_offline_run_has_the_tensorboard_tags(logged_run):
    d, _ = logged_run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(d / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    history, config = wandb_history(d / "tb")
    scalars, histograms = set(acc.Tags()["scalars"]), set(acc.Tags()["histograms"])
    assert scalars <= set(history), f"missing in W&B: {sorted(scalars - set(history))}"
    assert set(history) <= scalars | histograms
    for tag in ("train/loss", "eval/ppl", "sparsity/cett/activation_ratio"):
        assert history[tag] == [e.step for e in acc.Scalars(tag)]
    assert config["train.steps"] == 20 and config["model.vocab_size"] == 512


def test_missing_wandb_package_is_one_line(tiny_corpus, tmp_path):
    cfg = write_run_config(
        tmp_path / "run.yaml", tiny_corpus, logging={"dir": str(tmp_path), "wandb": {"project": "p"}}
    )
    code = (
        "import sys; sys.modules['wandb'] = None  # as if it were not installed\n"
        "from megasparse.train import main\n"
        f"sys.exit(main(['--config', {str(cfg)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=run_env(), capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr
    assert errors[0].startswith("megasparse.train: error: logging.wandb is set but the wandb package is not installed")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.timeout(600)
def test_a_layout_error_is_printed_once_and_every_rank_exits_2(tiny_corpus, tmp_path):
    cfg = write_run_config(tmp_path / "run.yaml", tiny_corpus, parallel={"tensor": 3})
    proc = run_train(cfg, launcher=deepspeed_launcher(2), check=False, timeout=600)
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if ": error: " in line]
    assert errors == [
        "megasparse.train: error: world size 2 is not divisible by parallel.tensor × parallel.pipeline = 3 × 1; "
        "choose sizes whose product divides the world size"
    ]
    assert proc.returncode == 2 and "Traceback" not in text


def test_data_with_ids_beyond_the_vocabulary_is_refused_before_start(tiny_corpus, tmp_path, capsys):
    from megasparse.train import main

    cfg = write_run_config(tmp_path / "run.yaml", tiny_corpus, model={"vocab_size": 300})
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"megasparse.train: error: data.train: {tiny_corpus['train']}")
    assert "holds token id 511, but model.vocab_size has only 300 ids" in err
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_data_of_another_tokenizer_is_refused(tiny_corpus, tmp_path, capsys):
    from megasparse.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer
    from megasparse.train import main

    other = tmp_path / "other"
    train_tokenizer(
        [tiny_corpus["train"].replace("_text_document", ".jsonl")],
        str(other),
        config=TokenizerTrainingConfig(vocab_size=600, input_sentence_size=0),
    )
    cfg = write_run_config(tmp_path / "run.yaml", tiny_corpus)
    assert main(["--config", str(cfg), "--set", f"data.tokenizer_model={other}.model"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was tokenized with" in err and "SentencePieceTokenizer" in err
    assert f"but data.tokenizer_model is {other}.model" in err


def test_older_data_without_a_report_is_scanned_with_a_warning(tiny_corpus, tmp_path):
    import shutil

    from megasparse.config import load_config
    from megasparse.training.data_checks import check_data_vocabulary

    for split in ("train", "valid"):
        for ext in (".bin", ".idx"):
            shutil.copy(tiny_corpus[split] + ext, tmp_path / f"{split}_text_document{ext}")
    corpus = dict(tiny_corpus, train=str(tmp_path / "train_text_document"), valid=str(tmp_path / "valid_text_document"))
    cfg = load_config(write_run_config(tmp_path / "run.yaml", corpus))
    warnings: list[str] = []
    check_data_vocabulary(cfg, warn=warnings.append)
    assert len(warnings) == 2 and "no recorded largest token id (scanned: 511)" in warnings[0]
    assert "no recorded tokenizer" in warnings[0]
    cfg.model.vocab_size = 500
    with pytest.raises(Exception, match="holds token id 511"):
        check_data_vocabulary(cfg, warn=warnings.append)

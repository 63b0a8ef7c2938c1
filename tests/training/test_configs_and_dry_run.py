"""Every shipped config validates, and ``--dry-run`` describes each run config without starting it."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import REPO, write_run_config

from megasparse.config import load_config
from megasparse.train import main

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
RUNS = sorted((REPO / "configs" / "runs").rglob("*.yaml"))
PAPER = {"0.1b": 80, "0.2b": 144, "0.4b": 192, "0.8b": 288, "1.2b": 384, "2.4b": 576}  # sequences per step


def _name(path: Path) -> str:
    return str(path.relative_to(REPO / "configs"))


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_every_config_validates(path):
    cfg = load_config(path)
    assert cfg.model.ffn_size and cfg.model.num_heads


def test_the_paper_runs_are_there():
    names = {p.stem for p in (REPO / "configs" / "runs" / "paper").glob("*.yaml")}
    assert names == {f"{size}-{act}" for size in PAPER for act in ("relu", "silu")}
    assert len(list((REPO / "configs" / "runs" / "width_depth").glob("*.yaml"))) == 13
    for size, sequences in PAPER.items():
        for act in ("relu", "silu"):
            cfg = load_config(REPO / "configs" / "runs" / "paper" / f"{size}-{act}.yaml")
            assert cfg.model.activation == act and cfg.name == f"{size}-{act}"
            assert cfg.train.global_batch_size == sequences and cfg.data.seq_length == 4096
            assert cfg.train.schedule.kind == "wsd" and cfg.model.vocab_size == 122753
            assert cfg.checkpoint.dir == f"runs/{size}-{act}/checkpoints"
    # Token budgets: the span of the paper's measured checkpoints (docs/sparsing-law.md §5.2).
    tokens = lambda name: (lambda c: c.train.steps * c.train.global_batch_size * 4096)(  # noqa: E731
        load_config(REPO / "configs" / "runs" / "paper" / f"{name}.yaml")
    )
    assert round(tokens("0.1b-relu") / 1e9, 1) == 41.6 and round(tokens("0.8b-silu") / 1e9, 1) == 193.1


@pytest.mark.parametrize("path", RUNS, ids=_name)
def test_dry_run_of_every_run_config(path, capsys, tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.chdir(tmp_path)  # the configs' data paths are relative: none of them exists here

    # The quickstart runs on 2 CPU processes with the tokenizer it trains first; the rest on 8 GPUs.
    quickstart = "runs/quickstart" in str(path)
    world = 2 if quickstart else 8
    extra = ["--set", "model.vocab_size=4096"] if quickstart else []
    assert main(["--config", str(path), "--dry-run", "--world-size", str(world), *extra]) == 0
    out = capsys.readouterr().out
    assert (
        "no process started, no data read" in out and f"layout      {world} processes = TP 1 × PP 1 × DP {world}" in out
    )
    assert "non-embedding" in out and "memory per GPU" in out
    rows = [line for line in out.splitlines() if line[:3] in ("  0", "  1", "  2", "  3")]
    assert [r.split()[0] for r in rows] == ["0", "1", "2", "3"] and all("GiB" in r or "MiB" in r for r in rows)
    assert "checks that wait for the data files" in out
    assert not dist.is_initialized()
    assert not Path(load_config(path).checkpoint.dir or "/nonexistent").exists()


def test_dry_run_numbers_of_the_paper_0p1b(capsys):
    assert main(["--config", str(REPO / "configs/runs/paper/0.1b-relu.yaml"), "--dry-run", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    # 108.55M non-embedding parameters (Table 3's 1.08e8), plus the tied 122,880 × 768 embedding.
    assert "parameters  202.9M total, 108.6M non-embedding" in out
    assert "80 sequences × 4096 tokens = 327,680 tokens per step (micro-batch 10 × DP 8 × accumulation 1)" in out
    assert "127,000 steps = 41.6B tokens" in out


def test_dry_run_refuses_a_layout_in_one_line(capsys):
    path = REPO / "configs/runs/paper/0.1b-relu.yaml"
    assert main(["--config", str(path), "--dry-run", "--world-size", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "megasparse.train: error: train.global_batch_size=80 is not divisible by train.micro_batch_size × "
        "data-parallel size = 10 × 3"
    )
    pipeline = ["--set", "parallel.pipeline=2", "--set", "train.loss_chunk_tokens=0"]
    assert main(["--config", str(path), "--dry-run", "--world-size", "8", *pipeline]) == 0
    out = capsys.readouterr().out
    assert "not with pipeline parallelism" in out and "layers, micro-batches in flight 2" in out


def test_dry_run_checks_the_data_when_it_exists(tiny_corpus, tmp_path, capsys):
    cfg = write_run_config(tmp_path / "run.yaml", tiny_corpus)
    assert main(["--config", str(cfg), "--dry-run", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert f"tokenizer   {tiny_corpus['tokenizer']}: vocabulary 512" in out
    assert "data checks passed" in out and "tokens; the run reads" in out
    assert main(["--config", str(cfg), "--dry-run", "--set", "model.vocab_size=100"]) == 2
    assert "holds token id 511, but model.vocab_size has only 100 ids" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "tb").exists()

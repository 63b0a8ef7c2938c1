"""Conversion time and peak resident memory against model size (benchmarks/RESULTS.md §conversion).

For each paper shape (configs/model/SHAPE.yaml, random weights): a source checkpoint is written
(layout-free, fp32 masters and, unless ``SHAPE:weights``, both Adam moments; written tensor by
tensor, not timed), then ``megasparse convert SRC DST --to megasparse --tp 2 --pp 2`` runs in a
fresh process under ``/usr/bin/time -v``, which reports its wall time and peak RSS. The source
and the output are deleted before the next shape (the 2.4B shape with moments needs ~33 GB each).

``SHAPE:trained`` instead trains the shape for one step in one CPU process (fp32, ZeRO-1,
random tokens) so that the source is DeepSpeed's own files (model states and the ZeRO optimizer
partition), then converts that.

    python benchmarks/convert_checkpoint_bench.py --shapes 0.1b 0.4b 1.2b 2.4b:weights 0.1b:trained \\
        --out benchmarks/results/convert_cpu_$(date +%Y%m%d).jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from megasparse.checkpoint.engine import LATEST_FILE, META_FILE
from megasparse.checkpoint.layout import LAYOUT_FILE, layout_record
from megasparse.checkpoint.layout_free import LAYOUT_FREE, MOMENTS, OPTIMIZER_PREFIX, TRAINING_FILE, WEIGHTS_PREFIX
from megasparse.checkpoint.safetensors_shards import ShardedSafetensorsWriter
from megasparse.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]


def model_config(shape: str) -> ModelConfig:
    raw = yaml.safe_load((REPO / "configs" / "model" / f"{shape}.yaml").read_text())["model"]
    return ModelConfig.model_validate(raw)


def write_source(folder: Path, config: ModelConfig, with_moments: bool) -> dict:
    """A random layout-free checkpoint at step 10 (what megasparse convert writes), one tensor at a time."""
    step_dir = folder / "global_step10"
    step_dir.mkdir(parents=True)
    layout = {"world_size": 1, "tensor": 1, "pipeline": 1, "data": 1, "zero_stage": 1}
    record = layout_record(config, layout, ranks=[])
    tensors = record["tensors"]
    plan = [(name, tuple(e["shape"]), torch.float32) for name, e in tensors.items()]
    weights = ShardedSafetensorsWriter(step_dir, WEIGHTS_PREFIX, plan=plan)
    moments = None
    if with_moments:
        plan = [(f"{k}/{name}", tuple(e["shape"]), torch.float32) for name, e in tensors.items() for k in MOMENTS]
        moments = ShardedSafetensorsWriter(step_dir, OPTIMIZER_PREFIX, plan=plan)
    generator = torch.Generator().manual_seed(0)
    largest = 0
    for name, entry in record["tensors"].items():
        shape = entry["shape"]
        largest = max(largest, math.prod(shape) * 4)
        weights.add(name, torch.randn(shape, generator=generator) * 0.02)
        if moments is not None:
            moments.add(f"exp_avg/{name}", torch.randn(shape, generator=generator) * 1e-3)
            moments.add(f"exp_avg_sq/{name}", torch.rand(shape, generator=generator) * 1e-6)
    weights.close({"format": LAYOUT_FREE})
    if moments is not None:
        moments.close({"format": LAYOUT_FREE})
    zeros = torch.zeros(config.num_layers, config.ffn_size, dtype=torch.int64)
    training = {
        "optimizer_step": 10,
        "lr_scheduler": None,
        "deepspeed": {"global_steps": 10, "global_samples": 10, "skipped_steps": 0},
        "loader": {"consumed_samples": 10, "num_samples": 100},
        "counters": {
            "layer_thresholds": [None] * config.num_layers,
            "active": zeros,
            "above_threshold": zeros,
            "tokens": zeros[:, 0],
        },
    }
    torch.save(training, step_dir / TRAINING_FILE)
    (step_dir / LAYOUT_FILE).write_text(json.dumps(record))
    meta = {
        "model": config.model_dump(),
        "layout": layout,
        "format": LAYOUT_FREE,
        "step": 10,
        "progress": {"step": 10, "consumed_samples": 10, "consumed_tokens": 40960},
    }
    (step_dir / META_FILE).write_text(json.dumps(meta))
    (folder / LATEST_FILE).write_text("global_step10")
    params = sum(math.prod(e["shape"]) for e in record["tensors"].values())
    return {
        "parameters": params,
        "largest_tensor_bytes": largest,
        "source_bytes": params * 4 * (3 if with_moments else 1),
    }


def train_source(folder: Path, shape: str) -> dict:
    """One optimizer step of SHAPE on random tokens in one CPU process; DeepSpeed's checkpoint files."""
    import numpy as np

    from megasparse.data.indexed_dataset import IndexedDatasetWriter

    vocab = model_config(shape).vocab_size or 512  # configs/model/tiny.yaml leaves it to the tokenizer
    tokens = np.random.default_rng(0).integers(0, vocab, size=(64, 257))  # [docs, tokens]
    writer = IndexedDatasetWriter(folder / "data" / "random_text_document", dtype=np.int32)
    for doc in tokens:
        writer.add_document(doc)
    writer.finalize()
    run = {
        "base": str(REPO / "configs" / "model" / f"{shape}.yaml"),
        "model": {"vocab_size": vocab},
        "data": {"train": [str(folder / "data" / "random_text_document")], "seq_length": 256},
        "train": {
            "micro_batch_size": 1,
            "global_batch_size": 1,
            "steps": 1,
            "eval_interval": 0,
            "precision": "fp32",
            "device": "cpu",
            "schedule": {"kind": "constant", "warmup_steps": 1},
        },
        "parallel": {"zero_stage": 1},
        "sparsity": {"cett_interval": 0},
        "checkpoint": {"dir": str(folder / "ckpt"), "interval": 1, "keep_last": 1},
        "logging": {"dir": str(folder / "tb"), "interval": 1},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(run))
    proc = subprocess.run(
        [sys.executable, "-m", "megasparse.train", "--config", str(folder / "run.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"training the source failed:\n{proc.stderr[-3000:]}")
    step = folder / "ckpt" / "global_step1"
    files = sum(p.stat().st_size for p in step.iterdir())
    record = json.loads((step / LAYOUT_FILE).read_text())
    params = sum(math.prod(e["shape"]) for e in record["tensors"].values())
    largest = max(math.prod(e["shape"]) * 4 for e in record["tensors"].values())
    return {"parameters": params, "largest_tensor_bytes": largest, "source_bytes": files}


def timed_convert(src: Path, dst: Path, extra: list[str]) -> dict:
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "megasparse",
        "convert",
        str(src),
        str(dst),
        "--to",
        "megasparse",
        *extra,
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"conversion failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return {"seconds": seconds, "peak_rss_bytes": rss_kb * 1024, "command": " ".join(cmd[2:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--shapes",
        nargs="+",
        default=["0.1b", "0.4b", "1.2b", "2.4b:weights"],
        help="SHAPE (weights and Adam moments) or SHAPE:weights",
    )
    p.add_argument("--target", nargs="+", default=["--tp", "2", "--pp", "2"], help="layout flags for convert")
    p.add_argument("--workdir", type=Path, default=None, help="where sources and outputs go (default: a temp dir)")
    p.add_argument("--commit", default="", help="commit recorded with the results")
    p.add_argument("--out", type=Path, help="append one JSON line per shape here")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.workdir))
    try:
        for item in args.shapes:
            shape, _, what = item.partition(":")
            with_moments = what != "weights"
            src, dst = workdir / f"src-{shape}", workdir / f"dst-{shape}"
            started = time.perf_counter()
            if what == "trained":
                src.mkdir()
                record = {"shape": shape, "source": "deepspeed zero-1", "optimizer_state": True}
                record.update(train_source(src, shape))
                src = src / "ckpt"
            else:
                record = {"shape": shape, "source": "layout-free", "optimizer_state": with_moments}
                record.update(write_source(src, model_config(shape), with_moments))
            record["source_write_seconds"] = round(time.perf_counter() - started, 1)
            record.update(timed_convert(src, dst, args.target))
            record.update(
                {
                    "target": " ".join(args.target),
                    "cpu": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "commit": args.commit,
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
            print(json.dumps(record), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            shutil.rmtree(workdir / f"src-{shape}")
            shutil.rmtree(dst)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

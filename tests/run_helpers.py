"""Helpers for tests that train: run configs, launching megasparse.train, reading TensorBoard back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_launcher(nproc: int) -> list[str]:
    """The real `deepspeed` launcher of this environment, starting `nproc` local processes."""
    beside_python = Path(sys.executable).with_name("deepspeed")
    exe = str(beside_python) if beside_python.exists() else "deepspeed"
    # A free port, not DeepSpeed's fixed default: other jobs on the machine may hold 29500.
    return [exe, "--num_gpus", str(nproc), "--master_port", str(free_port()), "--module"]


def write_run_config(path: Path, corpus: dict, **sections) -> Path:
    """A tiny CPU run config; keyword arguments override whole keys inside sections."""
    cfg = {
        "base": str(REPO / "configs" / "model" / "tiny.yaml"),
        "data": {
            "train": [corpus["train"]],
            "valid": [corpus["valid"]],
            "tokenizer_model": corpus["tokenizer"],
            "seq_length": 32,
        },
        "train": {
            "micro_batch_size": 2,
            "global_batch_size": 4,
            "steps": 20,
            "seed": 7,
            "eval_interval": 10,
            "eval_steps": 2,
            "precision": "fp32",
            "device": "cpu",
            "schedule": {"kind": "wsd", "warmup_steps": 4},
        },
        "sparsity": {"cett_interval": 10, "cett_batches": 2},
        "checkpoint": {"dir": str(path.parent / "ckpt"), "interval": 10, "keep_last": 2},
        "logging": {"dir": str(path.parent / "tb"), "interval": 5},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # Scripts that call `python` (the sbatch example) must find this environment's interpreter.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_train(
    config: Path, *extra: str, launcher: list[str] | None = None, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Runs megasparse.train in a fresh process (optionally under a launcher)."""
    cmd = (launcher or [sys.executable, "-m"]) + ["megasparse.train", "--config", str(config), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from megasparse.training.run_summary import read_scalars

    return read_scalars(logdir)


def reseal(folder: Path) -> None:
    """A checkpoint edited on purpose gets a manifest of its new files, so that the check under
    test sees the edit rather than the manifest's checksum mismatch."""
    from megasparse.checkpoint import manifest

    manifest.write_manifest(folder, manifest.describe_files(folder, manifest.files_to_record(folder)))

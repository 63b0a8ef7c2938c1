"""One-step checkpoints of every layout the trainer supports, shared by this folder's tests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import run_helpers
from layout_runs import LAYOUTS, LR


@pytest.fixture(scope="session")
def checkpoints(tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """One-step checkpoint folders of every layout, trained concurrently (they are tiny)."""
    root = tmp_path_factory.mktemp("layouts")

    def train(name: str) -> Path:
        nproc, parallel = LAYOUTS[name]
        precision = "bf16" if name == "bf16" else "fp32"
        cfg = run_helpers.write_run_config(
            root / f"{name}.yaml",
            tiny_corpus,
            train={"steps": 1, "eval_interval": 0, "optimizer": {"lr": LR}, "precision": precision},
            sparsity={"cett_interval": 0},
            parallel={"zero_stage": 1, **parallel},
            checkpoint={"dir": str(root / name / "ckpt"), "interval": 1, "keep_last": 1},
            logging={"dir": str(root / name / "tb"), "interval": 1},
        )
        run_helpers.run_train(cfg, launcher=run_helpers.deepspeed_launcher(nproc) if nproc else None)
        return root / name / "ckpt" / "global_step1"

    with ThreadPoolExecutor(4) as pool:
        folders = dict(zip(LAYOUTS, pool.map(train, LAYOUTS)))
    folders["corpus_valid"] = Path(tiny_corpus["valid"])
    return folders

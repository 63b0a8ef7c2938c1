"""Weights & Biases as a second sink next to TensorBoard: the same tags, the same steps.

Optional: ``wandb`` is not a requirement of megasparse. A run with ``logging.wandb`` set checks
that the package imports before any process group starts (:func:`require_wandb`) and stops
with one line when it does not. ``mode: offline`` writes the run under ``{dir}/wandb/`` for
``wandb sync`` later (clusters whose nodes have no internet access).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from megasparse.config import ConfigError, RunConfig, WandbConfig


def require_wandb(cfg: RunConfig) -> None:
    """One line instead of an ImportError deep inside the run."""
    if cfg.logging.wandb is None or cfg.logging.wandb.mode == "disabled":
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(
            "logging.wandb is set but the wandb package is not installed; `pip install wandb` "
            "(or `pip install megasparse[wandb]`), or remove logging.wandb"
        ) from None


def flat_config(values: dict, prefix: str = "") -> dict:
    """``{"train.optimizer.lr": 0.01, ...}``: nested sections as dotted keys, lists as text."""
    out: dict = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)) or value is None:
            out[name] = str(value)
        else:
            out[name] = value
    return out


class WandbRun:
    """One W&B run, written by global rank 0 only."""

    def __init__(self, settings: WandbConfig, run_name: str, default_dir: Optional[str], config: dict):
        import wandb

        directory = settings.dir or default_dir
        if directory:
            from pathlib import Path

            Path(directory).mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(
            project=settings.project,
            name=settings.name or run_name,
            mode=settings.mode,
            dir=directory,
            config=flat_config(config),
            # The console is ours: no wandb banner between the step lines, no captured stdout.
            settings=wandb.Settings(silent=True, console="off"),
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        if values:
            self.run.log(dict(values), step=step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        counts, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
        self.run.log({tag: self._wandb.Histogram(np_histogram=(counts, edges))}, step=step)

    def close(self) -> None:
        self.run.finish()

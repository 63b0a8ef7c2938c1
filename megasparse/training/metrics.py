"""TensorBoard, Weights & Biases and console output (tags: megasparse/tags.py, docs/tensorboard.md).
Only global rank 0 writes."""

from __future__ import annotations

import math
import os
import resource
import sys
from typing import Optional

import torch

from megasparse import tags
from megasparse.sparsity.reduction import CounterSnapshot

# Dense bf16 tensor-core peak per device name fragment, TFLOP/s (vendor datasheets, SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "B200": 2250.0, "GH200": 989.0}


def device_peak_tflops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return peak
    return None


def max_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # CPU: peak resident set size of this process (Linux reports KiB).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class MetricsWriter:
    """Writes scalars and histograms on rank 0; a no-op elsewhere or without a logdir.

    ``wandb_run`` (a :class:`~megasparse.training.wandb_logger.WandbRun`) receives every scalar
    and histogram under the same tag and step as TensorBoard.
    """

    def __init__(self, logdir: Optional[str], enabled: bool, console: bool = True, wandb_run=None):
        self.console = console and enabled
        self.writer = None
        self.wandb = wandb_run if enabled else None
        if enabled and logdir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=logdir)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars({tag: value}, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        finite = {t: float(v) for t, v in values.items() if v is not None and math.isfinite(float(v))}
        if self.writer is not None:
            for tag, value in finite.items():
                self.writer.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.scalars(finite, step)

    def config(self, run_config: dict, metrics: list[str]) -> None:
        """The resolved config as TensorBoard text (YAML) and hparams (``metrics``: the tags the
        HParams dashboard shows next to them)."""
        if self.writer is None:
            return
        import yaml
        from torch.utils.tensorboard.summary import hparams

        from megasparse.training.wandb_logger import flat_config

        text = yaml.safe_dump(run_config, sort_keys=False)
        # Markdown: indent four spaces so TensorBoard shows the YAML as code.
        self.writer.add_text(tags.CONFIG, "\n".join("    " + line for line in text.splitlines()), 0)
        experiment, session_start, session_end = hparams(flat_config(run_config), {m: 0.0 for m in metrics})
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)

    def sparsity(
        self, snap: CounterSnapshot, step: int, histograms: bool = True, dead_below: float = 0.001
    ) -> dict[str, float]:
        """The window's counter tags (zero threshold, and CETT thresholds once calibrated)."""
        ratios = snap.layer_activation_ratio()
        out = {
            tags.SPARSITY_ACTIVATION_RATIO: float(ratios.mean()),
            tags.dead_neuron_ratio(): snap.dead_neuron_ratio(dead_below),
        }
        for i, layer in enumerate(snap.layer_ids):
            out[tags.layer_activation_ratio(layer)] = float(ratios[i])
        thr = snap.layer_threshold_activation_ratio()
        if thr is not None:
            out[tags.CETT_ACTIVATION_RATIO] = float(thr.mean())
            for i, layer in enumerate(snap.layer_ids):
                out[tags.layer_activation_ratio(layer, tags.CETT)] = float(thr[i])
        self.scalars(out, step)
        if histograms and (self.writer is not None or self.wandb is not None):
            freq = snap.neuron_frequency()
            for i, layer in enumerate(snap.layer_ids):
                if self.writer is not None:
                    self.writer.add_histogram(tags.neuron_frequency(layer), freq[i].numpy(), step)
                if self.wandb is not None:
                    self.wandb.histogram(tags.neuron_frequency(layer), freq[i].numpy(), step)
        return out

    def line(self, text: str) -> None:
        if self.console:
            try:
                print(text, file=sys.stdout, flush=True)
            except BrokenPipeError:
                # The reader went away (an ssh session of pdsh closed, `| head`): training and
                # its checkpoints matter more than the console, so go on without one.
                silence_console()

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None


def silence_console() -> None:
    """Points stdout and stderr at /dev/null (file descriptors and Python objects alike)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)

"""TensorBoard and console output (tags: megasparse/tags.py, docs/tensorboard.md). Only global rank 0 writes."""

from __future__ import annotations

import math
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
    """Writes scalars and histograms on rank 0; a no-op elsewhere or without a logdir."""

    def __init__(self, logdir: Optional[str], enabled: bool, console: bool = True):
        self.console = console and enabled
        self.writer = None
        if enabled and logdir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=logdir)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None and math.isfinite(float(value)):
            self.writer.add_scalar(tag, float(value), step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

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
        if histograms and self.writer is not None:
            freq = snap.neuron_frequency()
            for i, layer in enumerate(snap.layer_ids):
                self.writer.add_histogram(tags.neuron_frequency(layer), freq[i].numpy(), step)
        return out

    def line(self, text: str) -> None:
        if self.console:
            print(text, file=sys.stdout, flush=True)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

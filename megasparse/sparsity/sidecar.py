"""Sparse-inference sidecar: what a sparse engine needs next to a checkpoint's weights.

Two files in one folder (beside a checkpoint, or anywhere):

``sparsity_sidecar.json`` (human-readable, small)::

    {"format": "megasparse-sparsity-sidecar", "version": 1,
     "method": "cett", "cett": 0.21, "target_ppl_increase_percent": 1.0, "ppl_ratio": 1.0099,
     "num_layers": L, "ffn_size": f, "activation": "relu",
     "layer_thresholds": [τ_0, ...],            # neuron i of layer l is active iff |h_i|·‖W_down[:, i]‖ ≥ τ_l
     "layer_activation_ratio": [...], "activation_ratio": 0.07,
     "hot_coverage": 0.8, "hot_neurons_per_layer": [...],
     "tokens_measured": N, "checkpoint": {"step": S, "tokens": T}}

``sparsity_sidecar.safetensors`` (tensors; row = layer, column = neuron of the FFN)::

    layer_thresholds   float32 [L]      τ_l on the neuron-output norm
    neuron_thresholds  float32 [L, f]   τ_l / ‖W_down[:, i]‖₂: compare |h_i| (the down_proj input)
                                        directly; +inf for a zero column (never active)
    neuron_frequency   float32 [L, f]   fraction of measured tokens on which the neuron was active
    neuron_order       int32   [L, f]   neurons by decreasing frequency (ties by index)
    hot_mask           uint8   [L, f]   1 = hot neuron

Hot/cold split (PowerInfer-style engines keep hot neurons on the GPU and cold ones on the
CPU): per layer, the hot set is the smallest set of most-frequent neurons that together
account for ``hot_coverage`` of the layer's activations (sum of frequencies). Engines with a
fixed memory budget use ``neuron_order`` to take the top-N instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

FORMAT = "megasparse-sparsity-sidecar"
VERSION = 1
JSON_FILE = "sparsity_sidecar.json"
TENSOR_FILE = "sparsity_sidecar.safetensors"


class SidecarError(ValueError):
    """A sidecar that cannot be read; the message names the file and the problem."""


@dataclass
class Sidecar:
    layer_thresholds: torch.Tensor  # float32 [L]
    neuron_thresholds: torch.Tensor  # float32 [L, f]
    neuron_frequency: torch.Tensor  # float32 [L, f]
    hot_coverage: float = 0.8
    info: dict[str, Any] = field(default_factory=dict)  # method, cett, ppl ratio, checkpoint, ...

    @property
    def neuron_order(self) -> torch.Tensor:
        # Stable sort on -frequency: equal frequencies keep index order, so the file is deterministic.
        return torch.sort(-self.neuron_frequency.float(), dim=1, stable=True).indices.to(torch.int32)

    @property
    def hot_mask(self) -> torch.Tensor:
        return hot_neuron_mask(self.neuron_frequency, self.hot_coverage)


def hot_neuron_mask(frequency: torch.Tensor, coverage: float) -> torch.Tensor:
    """bool [L, f]: per layer, the fewest most-frequent neurons covering ``coverage`` of activations."""
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"hot coverage must be in [0, 1], got {coverage}")
    freq = frequency.double()
    sorted_freq, order = torch.sort(-freq, dim=1, stable=True)
    sorted_freq = -sorted_freq
    total = sorted_freq.sum(dim=1, keepdim=True)
    before = torch.cumsum(sorted_freq, dim=1) - sorted_freq  # activations covered before this neuron
    take = (before < coverage * total - 1e-12) & (sorted_freq > 0)  # [L, f] in sorted order
    return torch.zeros_like(take).scatter_(1, order, take)


def write_sidecar(folder: Union[str, Path], sidecar: Sidecar) -> Path:
    """Writes both files into ``folder`` (created if needed); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hot = sidecar.hot_mask
    tensors = {
        "layer_thresholds": sidecar.layer_thresholds.detach().float().cpu().contiguous(),
        "neuron_thresholds": sidecar.neuron_thresholds.detach().float().cpu().contiguous(),
        "neuron_frequency": sidecar.neuron_frequency.detach().float().cpu().contiguous(),
        "neuron_order": sidecar.neuron_order.contiguous(),
        "hot_mask": hot.to(torch.uint8).contiguous(),
    }
    save_file(tensors, str(folder / TENSOR_FILE), metadata={"format": FORMAT, "version": str(VERSION)})
    L, f = tensors["neuron_frequency"].shape
    doc = {
        "format": FORMAT,
        "version": VERSION,
        **sidecar.info,
        "num_layers": int(L),
        "ffn_size": int(f),
        "layer_thresholds": tensors["layer_thresholds"].tolist(),
        "hot_coverage": sidecar.hot_coverage,
        "hot_neurons_per_layer": hot.sum(dim=1).tolist(),
    }
    (folder / JSON_FILE).write_text(json.dumps(doc, indent=2))
    return folder


def read_sidecar(folder: Union[str, Path]) -> Sidecar:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    json_path, tensor_path = folder / JSON_FILE, folder / TENSOR_FILE
    for p in (json_path, tensor_path):
        if not p.is_file():
            raise SidecarError(f"{p}: missing; write the sidecar with tools/measure_sparsity.py")
    try:
        doc = json.loads(json_path.read_text())
    except json.JSONDecodeError as e:
        raise SidecarError(f"{json_path}: not valid JSON ({e.msg})") from None
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise SidecarError(
            f"{json_path}: format {doc.get('format')!r} v{doc.get('version')}, expected {FORMAT!r} v{VERSION}"
        )
    try:
        t = load_file(str(tensor_path))
    except SafetensorError as e:
        raise SidecarError(f"{tensor_path}: not a safetensors file ({e})") from None
    missing = {"layer_thresholds", "neuron_thresholds", "neuron_frequency"} - set(t)
    if missing:
        raise SidecarError(f"{tensor_path}: tensors {sorted(missing)} missing")
    info = {
        k: v
        for k, v in doc.items()
        if k
        not in {
            "format",
            "version",
            "num_layers",
            "ffn_size",
            "layer_thresholds",
            "hot_coverage",
            "hot_neurons_per_layer",
        }
    }
    return Sidecar(
        layer_thresholds=t["layer_thresholds"],
        neuron_thresholds=t["neuron_thresholds"],
        neuron_frequency=t["neuron_frequency"],
        hot_coverage=float(doc["hot_coverage"]),
        info=info,
    )


def sidecar_from_measurement(
    layer_thresholds: torch.Tensor,
    neuron_thresholds: torch.Tensor,
    neuron_frequency: torch.Tensor,
    info: Optional[dict] = None,
    hot_coverage: float = 0.8,
) -> Sidecar:
    return Sidecar(
        layer_thresholds=layer_thresholds.float(),
        neuron_thresholds=neuron_thresholds.float(),
        neuron_frequency=neuron_frequency.float(),
        hot_coverage=hot_coverage,
        info=dict(info or {}),
    )

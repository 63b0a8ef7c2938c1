"""Sparse-inference sidecar: round trip, hot/cold split, format errors."""

from __future__ import annotations

import json

import pytest
import torch

from megasparse.sparsity.sidecar import (
    JSON_FILE,
    TENSOR_FILE,
    SidecarError,
    hot_neuron_mask,
    read_sidecar,
    sidecar_from_measurement,
    write_sidecar,
)


def random_sidecar() -> "object":
    g = torch.Generator().manual_seed(3)
    freq = torch.rand(3, 20, generator=g) ** 3
    tau = torch.rand(3, generator=g) + 0.1
    bounds = tau[:, None] / (torch.rand(3, 20, generator=g) + 0.5)
    return sidecar_from_measurement(
        tau, bounds, freq, {"method": "cett", "cett": 0.21, "checkpoint": {"step": 7}}, hot_coverage=0.7
    )


def test_round_trip(tmp_path):
    car = random_sidecar()
    write_sidecar(tmp_path / "sc", car)
    back = read_sidecar(tmp_path / "sc")
    for name in ("layer_thresholds", "neuron_thresholds", "neuron_frequency"):
        assert torch.equal(getattr(back, name), getattr(car, name).float()), name
    assert back.hot_coverage == 0.7 and back.info["cett"] == 0.21 and back.info["checkpoint"] == {"step": 7}
    assert torch.equal(back.hot_mask, car.hot_mask)
    doc = json.loads((tmp_path / "sc" / JSON_FILE).read_text())
    assert doc["layer_thresholds"] == pytest.approx(car.layer_thresholds.tolist())
    assert doc["hot_neurons_per_layer"] == car.hot_mask.sum(1).tolist()
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / "sc" / TENSOR_FILE))
    order = t["neuron_order"].long()
    ranked = torch.gather(car.neuron_frequency, 1, order)
    assert bool((ranked[:, 1:] <= ranked[:, :-1]).all())  # most frequent first


def test_hot_split_covers_the_requested_share_with_fewest_neurons():
    freq = torch.tensor([[0.1, 0.5, 0.0, 0.3, 0.1]])  # total 1.0
    assert hot_neuron_mask(freq, 0.8).tolist() == [[False, True, False, True, False]]  # 0.5 + 0.3
    assert hot_neuron_mask(freq, 0.81).tolist() == [[True, True, False, True, False]]  # + first 0.1 (stable)
    assert hot_neuron_mask(freq, 1.0).tolist() == [[True, True, False, True, True]]  # never the dead one
    assert not hot_neuron_mask(freq, 0.0).any()


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(SidecarError, match=JSON_FILE):
        read_sidecar(tmp_path)
    write_sidecar(tmp_path, random_sidecar())
    doc = json.loads((tmp_path / JSON_FILE).read_text())
    doc["version"] = 99
    (tmp_path / JSON_FILE).write_text(json.dumps(doc))
    with pytest.raises(SidecarError, match="v99"):
        read_sidecar(tmp_path)

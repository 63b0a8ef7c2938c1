"""Live calibration agrees with the offline measurement and leaves training state alone."""

from __future__ import annotations

import pytest
import torch
from sparse_fixtures import greedy_batches, one_thread, tiny_model, trained_run  # noqa: F401

from megasparse.checkpoint.reader import list_checkpoints, load_model
from megasparse.sparsity.counters import ActivationCounters, attach_counters
from megasparse.sparsity.live_calibration import LiveCalibrator, heldout_batches
from megasparse.sparsity.measure import Measurement, MeasureOptions, fixed_batches


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


def test_live_matches_offline_measurement(run, tmp_path):
    last = list_checkpoints(run["ckpt"])[-1]
    batches = fixed_batches([run["valid"]], 32, 3, 2)
    offline = Measurement([last], batches, MeasureOptions(last_k=1, sidecar="none")).run(tmp_path / "m")[0]

    model = load_model(last)
    model.train()
    result = LiveCalibrator(batches, p=1.0, tolerance=1e-3).calibrate(model)
    assert result.cett == pytest.approx(offline["cett"], abs=1e-9)
    assert result.layer_thresholds.tolist() == pytest.approx(offline["layer_thresholds"], rel=1e-5)
    assert result.ppl_ratio == pytest.approx(offline["ppl_ratio"], rel=1e-6)
    assert result.activation_ratio == pytest.approx(offline["activation_ratio"], rel=1e-6)
    assert abs(result.ppl_ratio - 1.01) < 0.01 and result.seconds > 0
    assert model.training, "calibration must restore train mode"
    scalars = result.scalars()
    assert scalars["sparsity/cett/value"] == result.cett and "perf/cett_calibration_s" in scalars


def test_training_counters_and_mode_are_untouched():
    model = tiny_model("relu")
    batch, *heldout = greedy_batches(model, 3)
    counters = ActivationCounters(range(2), 160)
    attach_counters(model, counters)
    with torch.no_grad():
        model(batch[:, :-1])  # some counts from "training"
    before = {
        k: v.clone() for k, v in (("a", counters.active), ("b", counters.above_threshold), ("t", counters.tokens))
    }
    slots = [m.count_slot for m in model.mlps()]
    model.eval()
    result = LiveCalibrator(heldout, tolerance=1e-2).calibrate(model)
    assert not model.training
    assert torch.equal(counters.active, before["a"]) and torch.equal(counters.tokens, before["t"])
    assert torch.equal(counters.above_threshold, before["b"])
    assert [m.count_slot for m in model.mlps()] == slots
    # The trainer then counts with the calibrated τ.
    counters.set_layer_thresholds(result.layer_thresholds)
    counters.refresh_neuron_thresholds([m.down_proj.weight.norm(dim=0) for m in model.mlps()])
    with torch.no_grad():
        model(batch[:, :-1])
    assert int(counters.tokens[0]) == 2 * before["t"][0]
    assert 0 < int(counters.above_threshold.sum()) < int(counters.active.sum())


def test_heldout_batches_are_fixed(run):
    from megasparse.config import DataConfig
    from megasparse.data.loader import build_datasets

    ds, _ = build_datasets(DataConfig(train=[run["valid"]], seq_length=32), 1, 8, 0, None)
    a, b = heldout_batches(ds, 2, 2), heldout_batches(ds, 2, 2)
    assert len(a) == 2 and a[0].shape == (2, 33) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(heldout_batches(ds, 1, 2, dp_rank=1, dp_size=2)[0], a[0])
    with pytest.raises(ValueError, match="at least one"):
        LiveCalibrator([])

"""BlendedDataset: every prefix of the blend within one sample of its weights; determinism."""

from __future__ import annotations

import numpy as np
import pytest

from megasparse.data.blended_dataset import BlendedDataset, blend_assignment, blend_counts, normalize_weights
from megasparse.data.gpt_dataset import GPTDataset


def max_prefix_deviation(assignment: np.ndarray, weights) -> float:
    w = normalize_weights(weights)
    served = np.cumsum(np.eye(len(w), dtype=np.int64)[assignment], axis=0)  # [n, K] after each sample
    ideal = np.outer(np.arange(1, assignment.size + 1), w)
    return float(np.abs(served - ideal).max())


@pytest.mark.parametrize(
    "weights",
    [
        [0.3, 0.7],
        [1, 1],
        [0.999, 0.001],
        [3.0, 1.0, 1.0],
        [0.5] + [0.05] * 10,  # one heavy dataset among many equal light ones: the hard case
        list(np.random.default_rng(0).random(7) ** 3),
        [0.0, 2.0, 1.0],
    ],
)
def test_every_prefix_within_one_sample(weights):
    assignment = blend_assignment(weights, 4000)
    assert max_prefix_deviation(assignment, weights) < 1.0
    counts = blend_counts(weights, 4000)
    assert sum(counts) == 4000
    for n in (1, 7, 100, 1234, 4000):  # spot-check a few prefixes explicitly
        realised = np.bincount(assignment[:n], minlength=len(weights))
        assert np.all(np.abs(realised - normalize_weights(weights) * n) < 1.0)


def test_random_weight_sets_stay_within_one_sample():
    rng = np.random.default_rng(1)
    for _ in range(20):
        weights = rng.random(int(rng.integers(3, 9))) ** 2
        assert max_prefix_deviation(blend_assignment(weights, 1500), weights) < 1.0


def test_two_dataset_closed_form_matches_the_step_by_step_rule():
    from megasparse.data.blended_dataset import _earliest_deadline_loop

    # Weights without decimal ties: at an exact tie (0.3 * 250 = 75) float rounding may pick
    # either dataset, and both picks keep the bound.
    for w0 in (0.5, 0.25, np.sqrt(2) - 1, 1 / np.pi, 0.00731):
        w = normalize_weights([w0, 1 - w0])
        np.testing.assert_array_equal(blend_assignment(w, 3000), _earliest_deadline_loop(w, 3000))


def test_blend_serves_children_in_order_and_is_deterministic(write_dataset, random_documents, tmp_path):
    weights = [2.0, 1.0, 1.0]
    n = 60
    counts = blend_counts(weights, n)
    children = [
        GPTDataset(
            write_dataset(f"d{k}", random_documents(seed=30 + k, count=20, vocab=100 * (k + 1))),
            8,
            counts[k],
            seed=4,
            eod_id=0,
            cache_dir=str(tmp_path / "c"),
        )
        for k in range(3)
    ]
    blend = BlendedDataset(children, weights, n, seed=4, cache_dir=str(tmp_path / "c"))
    again = BlendedDataset(children, weights, n, seed=4, cache_dir=str(tmp_path / "c"))
    assert not blend.cache_hit and again.cache_hit
    np.testing.assert_array_equal(blend.dataset_index, again.dataset_index)
    taken = {k: [] for k in range(3)}
    for i in range(n):
        k, j = int(blend.dataset_index[i]), int(blend.dataset_sample_index[i])
        np.testing.assert_array_equal(blend[i], children[k][j])
        taken[k].append(j)
    for k in range(3):  # each child serves exactly its samples, in its own (shuffled) order
        assert taken[k] == list(range(counts[k]))


def test_blend_rejects_too_small_children(write_dataset, random_documents, tmp_path):
    child = GPTDataset(
        write_dataset("small", random_documents(seed=40, count=10)), 4, 3, seed=1, cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(ValueError, match="small"):
        BlendedDataset([child, child], [0.5, 0.5], 10, seed=1)

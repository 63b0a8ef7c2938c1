"""Weighted interleaving of several datasets (Megatron's ``--data-path w1 p1 w2 p2 ...``).

Which dataset serves each blend sample is decided so that EVERY prefix of the blend stays
within one sample of its target mix: ``|served_k(n) - w_k * n| <= 1 - 1/(2K-2) < 1`` for all n
(K datasets). A greedy "largest deficit" rule (as in Megatron's helpers) can exceed this with three or
more datasets (random weights reach deviations of 1.14); Tijdeman's earliest-deadline rule,
used here, provably does. With two datasets both rules coincide and have a closed form
(dataset 0 has served ``floor(w_0 * n + 1/2)`` after n samples), computed vectorised.

Cost: two datasets, vectorised (10M samples well under a second); three or more, a tight loop
(about 0.2 µs per sample per dataset) whose result is cached on disk when a cache folder is given.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from megasparse.data.index_cache import IndexCache, hash_key


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError("blend weights must be a non-empty list")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"blend weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return w / w.sum()


def _greedy_two(w0: float, num_samples: int) -> np.ndarray:
    # Picking dataset 0 at step T iff its deficit >= 1/2 (the two deficits sum to 1) gives
    # served_0(T) = floor(w0*T + 1/2); dataset 0 is picked exactly where that count steps up.
    t = np.arange(num_samples + 1, dtype=np.float64)
    served0 = np.floor(w0 * t + 0.5).astype(np.int64)
    return (np.diff(served0) == 0).astype(np.int16)  # 0 where dataset 0 was picked, else 1


def _earliest_deadline_loop(weights: np.ndarray, num_samples: int) -> np.ndarray:
    # Tijdeman's rule, seen as scheduling: the j-th sample of dataset k is a job released at
    # time (j + d) / w_k and due at (j + 1 - d) / w_k, d = 1/(2K - 2); at each step serve the
    # released job that is due first. Every job then runs inside its window, which is exactly
    # |served_k - w_k * t| <= 1 - d. Plain Python floats: far faster than numpy calls per step.
    num = len(weights)
    slack = 1.0 / (2 * num - 2)
    inv = [1.0 / float(x) if x > 0 else math.inf for x in weights]
    served = [0] * num
    release = [slack * v for v in inv]
    due = [(1.0 - slack) * v for v in inv]
    picks = bytearray(num_samples) if num <= 256 else None
    wide = None if picks is not None else np.empty(num_samples, dtype=np.int16)
    ks = range(num)
    for i in range(num_samples):
        t = i + 1 + 1e-9  # tolerance: a release computed as t + rounding error still counts at t
        best, best_due = -1, math.inf
        for k in ks:
            if release[k] <= t and due[k] < best_due:
                best, best_due = k, due[k]
        c = served[best] = served[best] + 1
        release[best] = (c + slack) * inv[best]  # recomputed, not accumulated: no drift
        due[best] = (c + 1.0 - slack) * inv[best]
        if picks is not None:
            picks[i] = best
        else:
            wide[i] = best
    if picks is not None:
        return np.frombuffer(picks, dtype=np.uint8).astype(np.int16)
    return wide


def blend_assignment(weights: Sequence[float], num_samples: int) -> np.ndarray:
    """[num_samples] int16: which dataset serves each blend sample (see the module docstring)."""
    w = normalize_weights(weights)
    if len(w) > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} datasets can be blended, got {len(w)}")
    if len(w) == 1:
        return np.zeros(num_samples, dtype=np.int16)
    if len(w) == 2:
        return _greedy_two(float(w[0]), num_samples)
    return _earliest_deadline_loop(w, num_samples)


def blend_counts(weights: Sequence[float], num_samples: int) -> list[int]:
    """How many samples each dataset serves in a blend of ``num_samples`` (build children this big)."""
    assignment = blend_assignment(weights, num_samples)
    return [int(c) for c in np.bincount(assignment, minlength=len(weights))]


def _position_within_dataset(assignment: np.ndarray, num_datasets: int) -> np.ndarray:
    """For each blend sample, how many earlier samples its dataset served (its index there)."""
    order = np.argsort(assignment, kind="stable")
    counts = np.bincount(assignment, minlength=num_datasets)
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    within = np.empty(assignment.size, dtype=np.int64)
    within[order] = np.arange(assignment.size, dtype=np.int64) - group_start
    return within


class BlendedDataset:
    """Interleaves ``datasets`` by ``weights`` (normalised); ``len == num_samples``.

    Each child must hold at least the number of samples it serves (``blend_counts``); build the
    children with exactly those counts so every child's shuffle covers what is used. ``seed`` is
    part of the cache key only: the interleaving is a deterministic function of the weights.
    """

    def __init__(
        self,
        datasets: list,
        weights: list[float],
        num_samples: int,
        seed: int,
        cache_dir: Optional[str] = None,
    ):
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = list(datasets)
        self.weights = normalize_weights(weights)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        key = hash_key(["blend", self.weights, self.num_samples, self.seed])
        cache = IndexCache(cache_dir, f"blend-{len(datasets)}-{key[:20]}")
        arrays = cache.load()
        self.cache_hit = arrays is not None
        if arrays is None:
            assignment = blend_assignment(self.weights, self.num_samples)
            within = _position_within_dataset(assignment, len(datasets))
            arrays = {"dataset_index": assignment, "dataset_sample_index": within}
            cache.save(arrays, {"weights": self.weights.tolist(), "num_samples": self.num_samples})
        self.dataset_index = arrays["dataset_index"]  # [n] which child
        self.dataset_sample_index = arrays["dataset_sample_index"]  # [n] sample index in that child
        counts = np.bincount(self.dataset_index, minlength=len(datasets))
        for k, (ds, need) in enumerate(zip(self.datasets, counts)):
            if len(ds) < need:
                raise ValueError(
                    f"blend child {k} ({getattr(getattr(ds, 'indexed', None), 'prefix', ds)}) has {len(ds)} "
                    f"samples but the blend takes {int(need)}; build it with blend_counts()"
                )

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for {self.num_samples} samples")
        return self.datasets[int(self.dataset_index[index])][int(self.dataset_sample_index[index])]


def realised_fractions(assignment: np.ndarray, num_datasets: int, prefix: int) -> np.ndarray:
    """Fraction of the first ``prefix`` samples served by each dataset (diagnostics)."""
    return np.bincount(assignment[:prefix], minlength=num_datasets) / max(1, prefix)


__all__ = [
    "BlendedDataset",
    "blend_assignment",
    "blend_counts",
    "normalize_weights",
    "realised_fractions",
]

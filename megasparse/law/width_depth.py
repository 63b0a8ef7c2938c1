"""Width-depth and scale analyses of the limit activation ratio A0 (docs/sparsing-law.md §3-4).

* Bottleneck: A0 rises linearly with the width-depth ratio r = d_h / layers up to r*, then stays
  flat ("linear, then flat"). Fitted as A0 = a + k * min(r, r*), r* by grid search, (a, k) by
  linear least squares for each candidate r*.
* Scale trend: A0 against non-embedding parameter count, with a linear trend in log10(N).
* Convergence speed (the paper's Fig. 8): the slope of the sparsity curve, d(1 - A)/dD, taken
  analytically from a fitted law and expressed against the data-scale ratio tokens / params.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from megasparse.law.fit import LawFit, law_derivative


class WidthDepthError(ValueError):
    """Unusable input for a width-depth or scale analysis."""


def _pairs(x: Sequence[float], y: Sequence[float], what: str, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise WidthDepthError(f"{what}: {x.size} x values but {y.size} A0 values")
    if x.size < min_points:
        raise WidthDepthError(f"{what}: need at least {min_points} points, got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise WidthDepthError(f"{what}: non-finite values")
    order = np.argsort(x)
    return x[order], y[order]


@dataclass
class BottleneckFit:
    """A0 = intercept + slope * min(ratio, bottleneck); plateau = value at and after the bottleneck."""

    intercept: float
    slope: float
    bottleneck: float
    plateau: float
    sse: float
    n_points: int

    def predict(self, ratio: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * np.minimum(np.asarray(ratio, dtype=float), self.bottleneck)

    def to_dict(self) -> dict:
        return {k: float(v) if k != "n_points" else int(v) for k, v in self.__dict__.items()}


def fit_bottleneck(ratios: Sequence[float], limit_ratios: Sequence[float], grid_size: int = 512) -> BottleneckFit:
    """Fit the "linear, then flat" relation between width-depth ratio and A0.

    Candidates for the bottleneck r* are the data ratios themselves plus a log-spaced grid
    between the second-smallest and the largest ratio (a bottleneck at the smallest ratio
    would leave no linear part). The best r* minimises the squared error.
    """
    r, a0 = _pairs(ratios, limit_ratios, "width-depth fit", 3)
    if np.ptp(r) <= 0:
        raise WidthDepthError("width-depth fit: all ratios are equal")
    lo = r[r > r[0]][0]  # second-smallest distinct ratio
    grid = np.unique(np.concatenate([r[r >= lo], np.geomspace(max(lo, 1e-12), r[-1], grid_size)]))
    best = None
    for r_star in grid:
        x = np.minimum(r, r_star)
        design = np.stack([np.ones_like(x), x], axis=1)  # [n, 2]
        coef, *_ = np.linalg.lstsq(design, a0, rcond=None)
        sse = float(np.sum((design @ coef - a0) ** 2))
        # On ties keep the smallest r*: beyond the last point the plateau is unobserved.
        if best is None or sse < best[0] - 1e-15:
            best = (sse, float(r_star), float(coef[0]), float(coef[1]))
    sse, r_star, intercept, slope = best
    return BottleneckFit(
        intercept=intercept,
        slope=slope,
        bottleneck=r_star,
        plateau=intercept + slope * r_star,
        sse=sse,
        n_points=int(r.size),
    )


@dataclass
class ScaleTrend:
    """A0 = intercept + slope_per_decade * log10(params)."""

    slope_per_decade: float
    intercept: float
    params: list[float]
    limit_ratios: list[float]

    def predict(self, params: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope_per_decade * np.log10(np.asarray(params, dtype=float))

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def fit_scale_trend(params: Sequence[float], limit_ratios: Sequence[float]) -> ScaleTrend:
    """Limit activation ratio against parameter count: the data and a log-x linear trend."""
    n, a0 = _pairs(params, limit_ratios, "scale trend", 2)
    if np.any(n <= 0):
        raise WidthDepthError("scale trend: parameter counts must be > 0")
    if np.ptp(n) <= 0:
        raise WidthDepthError("scale trend: all parameter counts are equal")
    slope, intercept = np.polyfit(np.log10(n), a0, 1)
    return ScaleTrend(float(slope), float(intercept), n.tolist(), a0.tolist())


def sparsity_slope_vs_data_ratio(fit: LawFit, params: float, data_ratio: np.ndarray) -> np.ndarray:
    """d(1 - A)/dD (sparsity fraction per billion tokens) at D = data_ratio * params / 1e9.

    `params`: non-embedding parameter count; `data_ratio`: tokens / params. Positive for a ReLU
    fit (sparsity grows), negative for SiLU; a smaller |value| at the same data ratio means
    slower convergence (the paper finds smaller models converge faster).
    """
    if params <= 0:
        raise WidthDepthError(f"params must be > 0, got {params}")
    if not fit.ok:
        raise WidthDepthError("cannot take the derivative of a failed fit")
    D = np.asarray(data_ratio, dtype=float) * params / 1e9
    return -law_derivative(fit.law, D, fit.params)  # type: ignore[arg-type]

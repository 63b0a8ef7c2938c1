"""How sure a Sparsing-Law fit is: a profile-likelihood interval for A0 and a trend check.

**Profile likelihood.** With Gaussian residuals of unknown variance, fixing A0 = a and refitting
the other parameters gives the least squares SSE(a); the likelihood-ratio statistic is
n·ln(SSE(a) / SSE_min), χ²-distributed with one degree of freedom near the optimum. The 95%
interval is the set of a whose statistic stays below 3.841 (χ²₁'s 95% quantile). Unlike
A0 ± 1.96·s.e. it follows the curvature of the real problem: it is asymmetric where the curve
constrains A0 from one side only, and it says when the data cannot bound A0 at all (an end at
A0's physical limit, 0 or 1, is marked open).

**Trend.** The ReLU law decreases with the tokens and the SiLU law increases. When the data's
rank correlation with the tokens is clearly of the other sign, the fit answers a question the
data does not ask; :func:`trend_contradiction` says so.
"""

from __future__ import annotations

import math
import warnings as _warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, brentq, curve_fit
from scipy.stats import chi2, spearmanr

LEVEL = 0.95
A0_LIMITS = (0.0, 1.0)  # A0 is a ratio


@dataclass
class ProfileInterval:
    low: float
    high: float
    low_open: bool  # the likelihood does not bound A0 below: low is A0's limit, 0
    high_open: bool  # ... above: high is 1
    level: float = LEVEL

    def text(self) -> str:
        lo = f"{'≤' if self.low_open else ''}{100 * self.low:.2f}%"
        hi = f"{'≥' if self.high_open else ''}{100 * self.high:.2f}%"
        return f"[{lo}, {hi}]"


def _fit_others(
    law_fn: Callable,
    jac_fn: Callable,
    names: Sequence[str],
    D: np.ndarray,
    A: np.ndarray,
    a0: float,
    starts: list[np.ndarray],
) -> tuple[float, Optional[np.ndarray]]:
    """(least SSE over the other parameters with A0 = a0, all parameters) from the best of the
    starts that gives a convergent law (alpha, c > 0); inf, None when none does."""
    i0 = list(names).index("A0")
    free = [i for i in range(len(names)) if i != i0]

    def full(q) -> np.ndarray:
        p = np.empty(len(names))
        p[free], p[i0] = q, a0
        return p

    best_sse, best_p = math.inf, None
    for start in starts:
        try:
            with _warnings.catch_warnings(), np.errstate(all="ignore"):
                _warnings.simplefilter("ignore", OptimizeWarning)
                _warnings.simplefilter("ignore", RuntimeWarning)
                q, _ = curve_fit(
                    lambda D_, *q: law_fn(D_, *full(q)),
                    D,
                    A,
                    p0=start[free],
                    jac=lambda D_, *q: jac_fn(D_, *full(q))[:, free],  # [n, free] of the analytic Jacobian
                    maxfev=5000,
                )
                p = full(q)
                sse = float(np.sum((law_fn(D, *p) - A) ** 2))
        except (RuntimeError, ValueError, FloatingPointError, OverflowError, np.linalg.LinAlgError):
            continue
        v = dict(zip(names, p))
        if math.isfinite(sse) and sse < best_sse and v["alpha"] > 0 and v["c"] > 0:
            best_sse, best_p = sse, p
    return best_sse, best_p


def profile_interval(
    law_fn: Callable,
    jac_fn: Callable,
    names: Sequence[str],
    D: np.ndarray,
    A: np.ndarray,
    best: np.ndarray,
    sse_min: float,
    se_a0: float,
    level: float = LEVEL,
) -> Optional[ProfileInterval]:
    """The ``level`` profile-likelihood interval of A0 around the fit ``best`` (SSE ``sse_min``).

    Each end is found by stepping away from the fitted A0 (the standard error, doubling) until the
    statistic exceeds the χ² quantile, then by Brent's method between the last inside and the first
    outside point. An A0 for which no convergent law exists (alpha, c > 0) counts as outside.
    None when there are no residual degrees of freedom (as many points as parameters), or when
    the profile finds a clearly better optimum than ``best`` (then ``best`` is not a fit to
    build an interval around).
    """
    n = D.size
    if n <= len(names) or not sse_min > 0:
        return None
    critical = float(chi2.ppf(level, df=1))
    best = np.asarray(best, dtype=float)
    a_hat = float(best[list(names).index("A0")])
    warm = {"p": best}
    # a0 -> statistic, so that Brent's method sees the same bracket values as the scan did
    values: dict[float, float] = {a_hat: -critical}
    lowest = {"sse": sse_min}

    def statistic(a0: float) -> float:
        """n·ln(SSE(a0)/SSE_min) − critical: ≤ 0 inside the interval, inf where no law converges."""
        if a0 not in values:
            sse, p = _fit_others(law_fn, jac_fn, names, D, A, a0, [warm["p"], best])
            if p is None:
                values[a0] = math.inf
            else:
                warm["p"] = p  # continuation: the next A0 starts from this one's optimum
                lowest["sse"] = min(lowest["sse"], sse)
                values[a0] = n * math.log(max(sse, 1e-300) / sse_min) - critical
        return values[a0]

    step = se_a0 if math.isfinite(se_a0) and se_a0 > 0 else max(abs(a_hat) * 0.01, 1e-4)
    ends = []
    for direction, limit in ((-1, A0_LIMITS[0]), (1, A0_LIMITS[1])):
        warm["p"] = best
        inside, distance = a_hat, step
        end, open_end = limit, True
        while True:
            probe = a_hat + direction * distance
            if (probe - limit) * direction >= 0:
                probe = limit
            value = statistic(probe)
            if value == math.inf and probe == limit:
                break  # the law degenerates at A0's limit and the data did not bound A0 before it: open
            if value > 0:
                end = brentq(lambda a: min(statistic(a), 1e9), *sorted((inside, probe)), xtol=1e-6)
                open_end = False
                break
            inside = probe
            if probe == limit:
                break  # still inside at A0's limit: open
            distance *= 2
        ends.append((end, open_end))
    if lowest["sse"] < sse_min * (1 - 1e-6):
        return None
    (low, low_open), (high, high_open) = ends
    return ProfileInterval(low, high, low_open, high_open, level)


def trend_contradiction(law: str, D: np.ndarray, A: np.ndarray) -> Optional[str]:
    """A warning when the activation ratio clearly moves against the law's direction, else None."""
    if D.size < 4 or np.ptp(A) == 0:
        return None
    rho, p = spearmanr(D, A)
    if not math.isfinite(rho):
        return None
    falls = rho < -0.5 and p < 0.05
    rises = rho > 0.5 and p < 0.05
    if law == "silu" and falls:
        return (
            f"the data fall with the tokens (Spearman ρ = {rho:+.2f}) but the silu law rises: did you mean "
            "--law relu? (ReLU runs' activation ratios decrease, SiLU runs' increase)"
        )
    if law == "relu" and rises:
        return (
            f"the data rise with the tokens (Spearman ρ = {rho:+.2f}) but the relu law falls: did you mean "
            "--law silu? (ReLU runs' activation ratios decrease, SiLU runs' increase)"
        )
    return None

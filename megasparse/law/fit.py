"""Fitting the Sparsing Law: activation ratio A as a function of training tokens D.

Two laws (docs/sparsing-law.md §2), with D = tokens passed in billions and A a fraction:

    ReLU ("logspace power law", convergent, decreasing):  A(D) = exp(-c * D**alpha + b) + A0
    SiLU (power law, convergent, increasing):             A(D) = -c * D**(-alpha) + A0

The paper fits them with Levenberg-Marquardt (`scipy.optimize.curve_fit`). Those fits are badly
conditioned: alpha, b and c trade off against each other and only A0 (the limit activation
ratio) is robust. So we fit from many starts (the paper's Table 2 values plus starts derived
from the data), with both the paper's unbounded LM and a bounded trust-region solver, discard
physically impossible optima (A0 < 0, c <= 0, alpha <= 0) and keep the lowest squared error.
Poorly identified parameters are reported as warnings, never as a crash. How sure A0 is comes
as a 95% profile-likelihood interval (law/uncertainty.py), and a curve that moves against the
law's direction is reported.
"""

from __future__ import annotations

import math
import warnings as _warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from megasparse.law.uncertainty import ProfileInterval, profile_interval, trend_contradiction

LAWS = ("relu", "silu")
PARAM_NAMES: dict[str, tuple[str, ...]] = {"relu": ("alpha", "b", "c", "A0"), "silu": ("alpha", "c", "A0")}
METHODS = ("auto", "lm", "trf")

# Bounds for the trust-region solver. Physical: A0 is a ratio in [0, 1]; c, alpha > 0 make the
# laws convergent. b and the upper limits only keep the solver away from overflow.
_BOUNDS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "relu": ((1e-6, -50.0, 1e-12, 0.0), (10.0, 10.0, 1e6, 1.0)),
    "silu": ((1e-6, 1e-12, 0.0), (10.0, 1e3, 1.0)),
}

# Paper Table 2 (arXiv 2411.02335 v4, App. G); "skip" = early points the published fit dropped,
# as found by refitting the released points (docs/sparsing-law.md §2, 0-based slice x[skip:]).
# None = not reproducible by simple truncation.
PAPER_TABLE2: dict[str, dict] = {
    "0.1b_relu": dict(law="relu", alpha=1.01e-1, b=-1.51e-2, c=3.20e0, A0=6.14e-2, skip=0),
    "0.2b_relu": dict(law="relu", alpha=4.49e-1, b=-3.05e0, c=2.86e-1, A0=6.74e-2, skip=0),
    "0.4b_relu": dict(law="relu", alpha=6.83e-1, b=-3.46e0, c=7.90e-2, A0=6.90e-2, skip=None),
    "0.8b_relu": dict(law="relu", alpha=1.01e0, b=-3.49e0, c=7.97e-3, A0=7.21e-2, skip=0),
    "1.2b_relu": dict(law="relu", alpha=1.33e0, b=-3.89e0, c=9.03e-4, A0=7.82e-2, skip=6),
    "2.4b_relu": dict(law="relu", alpha=1.53e0, b=-3.46e0, c=1.56e-4, A0=6.48e-2, skip=None),
    "0.1b_silu": dict(law="silu", alpha=4.79e-1, b=None, c=1.02e-1, A0=4.09e-1, skip=5),
    "0.2b_silu": dict(law="silu", alpha=8.44e-1, b=None, c=2.08e-1, A0=3.90e-1, skip=6),
    "0.4b_silu": dict(law="silu", alpha=1.03e0, b=None, c=4.20e-1, A0=3.85e-1, skip=None),
    "0.8b_silu": dict(law="silu", alpha=9.95e-1, b=None, c=5.62e-1, A0=3.83e-1, skip=None),
    "1.2b_silu": dict(law="silu", alpha=9.67e-1, b=None, c=5.38e-1, A0=3.82e-1, skip=None),
}

# A relative standard error above this marks a parameter as poorly identified.
POOR_RELATIVE_SE = 1.0


class LawFitError(ValueError):
    """Input that cannot be fitted at all (unknown law, too few points, mismatched arrays)."""


def relu_law(D: np.ndarray, alpha: float, b: float, c: float, A0: float) -> np.ndarray:
    """ReLU law A(D) = exp(-c * D**alpha + b) + A0 (D in billions of tokens)."""
    return np.exp(-c * np.power(D, alpha) + b) + A0


def silu_law(D: np.ndarray, alpha: float, c: float, A0: float) -> np.ndarray:
    """SiLU law A(D) = -c * D**(-alpha) + A0 (D in billions of tokens)."""
    return -c * np.power(D, -alpha) + A0


def _relu_jac(D: np.ndarray, alpha: float, b: float, c: float, A0: float) -> np.ndarray:
    # Analytic Jacobian [n, 4]: faster and more reliable than finite differences when the
    # exponential is tiny (flat curves) or the parameters trade off.
    Da = np.power(D, alpha)
    e = np.exp(-c * Da + b)
    return np.stack([-e * c * Da * np.log(D), e, -e * Da, np.ones_like(D)], axis=1)


def _silu_jac(D: np.ndarray, alpha: float, c: float, A0: float) -> np.ndarray:
    Dm = np.power(D, -alpha)
    return np.stack([c * Dm * np.log(D), -Dm, np.ones_like(D)], axis=1)  # [n, 3]


_LAW_FUNCS = {"relu": relu_law, "silu": silu_law}
_LAW_JACS = {"relu": _relu_jac, "silu": _silu_jac}


def _check_law(law: str) -> None:
    if law not in LAWS:
        raise LawFitError(f"unknown law {law!r}: use one of {', '.join(LAWS)}")


def law_value(law: str, D: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """Evaluate the fitted law at D (billions of tokens)."""
    _check_law(law)
    args = [params[name] for name in PARAM_NAMES[law]]
    with np.errstate(over="ignore", invalid="ignore"):
        return _LAW_FUNCS[law](np.asarray(D, dtype=float), *args)


def law_derivative(law: str, D: np.ndarray, params: Mapping[str, float]) -> np.ndarray:
    """dA/dD in fraction per billion tokens, analytically (the sparsity slope is its negative)."""
    _check_law(law)
    D = np.asarray(D, dtype=float)
    alpha, c = params["alpha"], params["c"]
    with np.errstate(over="ignore", invalid="ignore"):
        if law == "relu":
            return np.exp(-c * np.power(D, alpha) + params["b"]) * (-c * alpha * np.power(D, alpha - 1.0))
        return c * alpha * np.power(D, -alpha - 1.0)


@dataclass
class LawFit:
    """Result of one fit. `params`/`stderr` use the names of PARAM_NAMES; b is None for SiLU."""

    law: str
    params: dict[str, float | None]
    stderr: dict[str, float | None]
    mae: float
    sse: float
    n_points: int
    skipped: int
    method: str
    warnings: list[str] = field(default_factory=list)
    ok: bool = True
    error: str | None = None
    a0_interval: ProfileInterval | None = None  # 95% profile likelihood; None without spare points

    def predict(self, D: np.ndarray) -> np.ndarray:
        return law_value(self.law, D, self.params)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """Flat JSON-ready dict: alpha, b, c, A0, <name>_se, mae, ... (NaN/missing -> None)."""

        def clean(x):
            return None if x is None or not math.isfinite(x) else float(x)

        out: dict = {"law": self.law, "ok": self.ok}
        for name in ("alpha", "b", "c", "A0"):
            out[name] = clean(self.params.get(name))
            out[f"{name}_se"] = clean(self.stderr.get(name))
        ci = self.a0_interval
        out.update(
            A0_ci_low=clean(ci.low) if ci else None,
            A0_ci_high=clean(ci.high) if ci else None,
            # an open end: the data do not bound A0 on that side (the value is A0's limit, 0 or 1)
            A0_ci_open=[ci.low_open, ci.high_open] if ci else None,
            A0_ci_level=ci.level if ci else None,
        )
        out.update(
            mae=clean(self.mae),
            sse=clean(self.sse),
            n_points=self.n_points,
            skipped=self.skipped,
            method=self.method,
            warnings=list(self.warnings),
            error=self.error,
        )
        return out


def default_starts(law: str, D: np.ndarray, A: np.ndarray) -> list[tuple[float, ...]]:
    """Initial guesses: the paper's Table 2 rows for this law, then starts derived from the data
    by linearising the law around a guessed A0 (the way the authors' show.py checks a fit)."""
    starts = [tuple(row[n] for n in PARAM_NAMES[law]) for row in PAPER_TABLE2.values() if row["law"] == law]
    lnD = np.log(D)
    if law == "relu":
        # ln(A - A0) = b - c * D**alpha: linear in D**alpha for a fixed (alpha, A0).
        for frac in (0.5, 0.9, 0.98):
            A0 = frac * float(A.min())
            y = np.log(np.maximum(A - A0, 1e-12))
            for alpha in (0.1, 0.5, 1.0, 2.0):
                x = np.power(D, alpha)
                if np.ptp(x) <= 0:
                    continue
                slope, intercept = np.polyfit(x, y, 1)
                starts.append((alpha, float(intercept), max(-float(slope), 1e-3), A0))
    else:
        # ln(A0 - A) = ln c - alpha * ln D: linear in ln D for a fixed A0.
        for frac in (1.01, 1.05, 1.2):
            A0 = min(frac * float(A.max()), 1.0)
            y = np.log(np.maximum(A0 - A, 1e-12))
            if np.ptp(lnD) > 0:
                slope, intercept = np.polyfit(lnD, y, 1)
                starts.append((max(-float(slope), 1e-3), float(np.exp(intercept)), A0))
            for alpha in (0.3, 1.0):
                starts.append((alpha, max(float((A0 - A[0]) * D[0] ** alpha), 1e-3), A0))
    return starts


def _admissible(law: str, p: np.ndarray) -> bool:
    names = PARAM_NAMES[law]
    v = dict(zip(names, p))
    return bool(np.all(np.isfinite(p)) and 0.0 <= v["A0"] <= 1.0 and v["c"] > 0 and v["alpha"] > 0)


def _try_fit(law, D, A, p0, method, max_nfev):
    """One curve_fit run; returns (params, cov, sse) or None when it fails or is inadmissible."""
    func = _LAW_FUNCS[law]
    kwargs: dict = {"p0": p0, "method": method, "jac": _LAW_JACS[law]}
    if method == "trf":
        lo, hi = _BOUNDS[law]
        kwargs["p0"] = np.clip(p0, np.array(lo) + 1e-12, np.array(hi) - 1e-12)
        kwargs.update(bounds=(lo, hi), max_nfev=max_nfev)
    else:
        kwargs["maxfev"] = max_nfev
    try:
        with _warnings.catch_warnings(), np.errstate(all="ignore"):
            _warnings.simplefilter("ignore", OptimizeWarning)
            _warnings.simplefilter("ignore", RuntimeWarning)
            p, cov = curve_fit(func, D, A, **kwargs)
            resid = func(D, *p) - A
    except (RuntimeError, ValueError, FloatingPointError, OverflowError, np.linalg.LinAlgError):
        return None
    sse = float(np.sum(resid**2))
    if not math.isfinite(sse) or not _admissible(law, p):
        return None
    return p, cov, sse


def _identification_warnings(law: str, p: np.ndarray, se: np.ndarray, cov_ok: bool, n: int) -> list[str]:
    names = PARAM_NAMES[law]
    out = []
    if n == len(names):
        out.append(f"only {n} points for {len(names)} parameters: the curve is interpolated, no standard errors")
    elif not cov_ok:
        out.append("covariance could not be estimated (singular Jacobian): parameters are not identified")
    else:
        poor = []
        for name, value, s in zip(names, p, se):
            rel = s / abs(value) if value != 0 else math.inf
            if rel > POOR_RELATIVE_SE:
                poor.append((name, rel))
        shape = [(n, r) for n, r in poor if n != "A0"]
        if shape:
            # One line: alpha, b and c trade off against each other on most real curves.
            out.append(
                f"{', '.join(n for n, _ in shape)} poorly identified (relative std. error "
                f"{', '.join(f'{r:.3g}' for _, r in shape)}): they trade off; compare A0 and its interval"
            )
        out += [f"A0 poorly identified (relative std. error {r:.3g})" for n, r in poor if n == "A0"]
    lo, hi = _BOUNDS[law]
    a0 = dict(zip(names, p))["A0"]
    if a0 <= lo[-1] + 1e-9:
        out.append("A0 reached its lower bound 0: the data do not show the limit; drop early points or train longer")
    return out


def fit_sparsing_law(
    tokens_b: Sequence[float] | np.ndarray,
    activation_ratio: Sequence[float] | np.ndarray,
    law: str,
    *,
    skip_first: int = 0,
    method: str = "auto",
    starts: Iterable[Sequence[float]] | None = None,
    max_nfev: int = 5000,
    interval: bool = True,
) -> LawFit:
    """Fit one curve. tokens_b: tokens passed in billions (> 0); activation_ratio: fractions.

    method: "lm" (the paper's unbounded Levenberg-Marquardt), "trf" (bounded trust region) or
    "auto" (both, from every start; best admissible SSE wins, LM preferred on ties).
    ``interval``: also the 95% profile-likelihood interval of A0 (``a0_interval``).
    Raises LawFitError for unusable input; a fit that fails from every start returns ok=False.
    """
    _check_law(law)
    if method not in METHODS:
        raise LawFitError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    D = np.asarray(tokens_b, dtype=float).ravel()
    A = np.asarray(activation_ratio, dtype=float).ravel()
    if D.shape != A.shape:
        raise LawFitError(f"{D.size} token values but {A.size} activation ratios")
    if skip_first < 0:
        raise LawFitError(f"skip_first must be >= 0, got {skip_first}")
    notes: list[str] = []
    keep = np.isfinite(D) & np.isfinite(A) & (D > 0)
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} point(s) with tokens <= 0 or non-finite values")
    D, A = D[keep], A[keep]
    order = np.argsort(D, kind="stable")
    D, A = D[order], A[order]
    D, A = D[skip_first:], A[skip_first:]
    names = PARAM_NAMES[law]
    if D.size < len(names):
        raise LawFitError(
            f"too few points for the {law} law: {D.size} after skipping {skip_first} "
            f"(need at least {len(names)}, one per parameter)"
        )

    contradiction = trend_contradiction(law, D, A)
    if contradiction:
        notes.append(contradiction)
    candidates = [tuple(map(float, s)) for s in (starts if starts is not None else default_starts(law, D, A))]
    solvers = ("lm", "trf") if method == "auto" else (method,)
    best = None
    for p0 in candidates:
        for solver in solvers:
            res = _try_fit(law, D, A, np.asarray(p0, dtype=float), solver, max_nfev)
            if res is None:
                continue
            # Prefer LM (the paper's method) unless trf is better by more than round-off.
            if (
                best is None
                or res[2] < best[2] * (1 - 1e-9) - 1e-18
                or (solver == "lm" and best[3] != "lm" and res[2] <= best[2] * (1 + 1e-9) + 1e-18)
            ):
                best = (*res, solver)
    n = int(D.size)
    if best is None:
        nan = {k: math.nan for k in names}
        return LawFit(
            law=law,
            params=nan,
            stderr=dict(nan),
            mae=math.nan,
            sse=math.nan,
            n_points=n,
            skipped=skip_first,
            method=method,
            warnings=notes,
            ok=False,
            error=f"no admissible fit from {len(candidates)} starts (method {method}); "
            "try --method trf, more points, or --skip-first",
        )
    p, cov, sse, solver = best
    cov = np.asarray(cov, dtype=float)
    cov_ok = bool(np.all(np.isfinite(cov))) and n > len(names)
    se = np.sqrt(np.abs(np.diag(cov))) if cov_ok else np.full(len(names), math.nan)
    notes += _identification_warnings(law, p, se, cov_ok, n)
    params: dict[str, float | None] = dict(zip(names, map(float, p)))
    stderr: dict[str, float | None] = dict(zip(names, map(float, se)))
    if law == "silu":
        params["b"], stderr["b"] = None, None
    mae = float(np.mean(np.abs(law_value(law, D, params) - A)))  # type: ignore[arg-type]
    ci = None
    if interval:
        se_a0 = float(se[list(names).index("A0")])
        ci = profile_interval(_LAW_FUNCS[law], _LAW_JACS[law], names, D, A, np.asarray(p, dtype=float), sse, se_a0)
        if ci is None and n > len(names):
            notes.append("no interval for A0: its profile likelihood found a better optimum than the fit")
    return LawFit(
        law=law,
        params=params,
        stderr=stderr,
        mae=mae,
        sse=sse,
        n_points=n,
        skipped=skip_first,
        method=solver,
        warnings=notes,
        a0_interval=ci,
    )

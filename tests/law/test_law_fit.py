"""Sparsing-Law fits: reproduction of the paper's Table 2 on the released curves, recovery of
known parameters, robustness on ill-conditioned curves, width-depth and scale analyses."""

import numpy as np
import pytest

from megasparse.law.data import load_reference_curve
from megasparse.law.fit import (
    PAPER_TABLE2,
    LawFitError,
    fit_sparsing_law,
    law_derivative,
    law_value,
)
from megasparse.law.width_depth import (
    WidthDepthError,
    fit_bottleneck,
    fit_scale_trend,
    sparsity_slope_vs_data_ratio,
)

# Tolerances of the reproduction requirement: A0 within 0.001 (ReLU) and 0.01 (SiLU).
A0_TOL = {"relu": 1e-3, "silu": 1e-2}


@pytest.mark.parametrize("name", ["0.1b_relu", "0.8b_relu", "0.1b_silu"])
def test_released_curves_reproduce_table2(name):
    row = PAPER_TABLE2[name]
    curve = load_reference_curve(name)
    # 0.1B SiLU: the published fit used points 5..end; the two ReLU fits used all points.
    fit = fit_sparsing_law(curve.tokens_b, curve.activation_ratio, row["law"], skip_first=row["skip"])
    assert fit.ok
    assert fit.skipped == row["skip"]
    assert fit.n_points == curve.tokens_b.size - row["skip"]
    assert abs(fit.params["A0"] - row["A0"]) < A0_TOL[row["law"]]
    # The fit is at least as good as the paper's parameters on the same points.
    D, A = curve.tokens_b[row["skip"] :], curve.activation_ratio[row["skip"] :]
    paper_mae = np.mean(np.abs(law_value(row["law"], D, row) - A))
    assert fit.mae <= paper_mae + 1e-6
    assert fit.mae < 2e-3


def test_released_relu_fits_match_all_table2_parameters():
    # The 0.8B ReLU fit is well conditioned: every parameter reproduces, not only A0.
    curve = load_reference_curve("0.8b_relu")
    fit = fit_sparsing_law(curve.tokens_b, curve.activation_ratio, "relu", method="lm")
    row = PAPER_TABLE2["0.8b_relu"]
    for name, rel in (("alpha", 0.02), ("b", 0.01), ("c", 0.05), ("A0", 0.002)):
        assert fit.params[name] == pytest.approx(row[name], rel=rel)
    assert not fit.warnings


def test_silu_without_skip_differs_from_table2():
    # Documented sensitivity: all points give a larger A0 than the published (points 5..end) fit.
    curve = load_reference_curve("0.1b_silu")
    fit = fit_sparsing_law(curve.tokens_b, curve.activation_ratio, "silu")
    assert fit.ok and fit.params["A0"] > PAPER_TABLE2["0.1b_silu"]["A0"] + 0.005


@pytest.mark.parametrize(
    "law,true",
    [
        ("relu", dict(alpha=0.6, b=-2.5, c=0.4, A0=0.065)),
        ("silu", dict(alpha=0.7, c=0.15, A0=0.39)),
    ],
)
def test_synthetic_curve_is_recovered(law, true):
    rng = np.random.default_rng(1234)
    D = np.sort(rng.uniform(0.5, 120.0, size=40))
    A = law_value(law, D, {**true, "b": true.get("b", 0.0)}) + rng.normal(0.0, 2e-4, size=D.size)
    fit = fit_sparsing_law(D, A, law)
    assert fit.ok
    assert fit.params["A0"] == pytest.approx(true["A0"], abs=3e-3)
    assert fit.params["alpha"] == pytest.approx(true["alpha"], rel=0.25)
    assert fit.mae < 4e-4
    # The reported standard error of A0 is consistent with the actual error.
    assert abs(fit.params["A0"] - true["A0"]) < 5 * fit.stderr["A0"]


@pytest.mark.parametrize("method", ["auto", "lm", "trf"])
def test_nearly_flat_curve_warns_without_negative_a0(method):
    rng = np.random.default_rng(7)
    D = np.linspace(1.0, 40.0, 25)
    A = 0.071 + rng.normal(0.0, 3e-4, size=D.size)
    fit = fit_sparsing_law(D, A, "relu", method=method)
    if fit.ok:
        assert 0.0 <= fit.params["A0"] <= 1.0
        assert fit.warnings, "poorly identified parameters must be reported"
    else:
        assert "no admissible fit" in fit.error
        assert fit.to_dict()["A0"] is None


def test_three_points_silu_warns_and_relu_refuses():
    D = np.array([1.0, 4.0, 16.0])
    A = np.array([0.31, 0.355, 0.372])
    fit = fit_sparsing_law(D, A, "silu")
    assert fit.ok and fit.params["A0"] >= 0.0
    assert any("3 points for 3 parameters" in w for w in fit.warnings)
    assert fit.to_dict()["A0_se"] is None
    with pytest.raises(LawFitError, match="too few points.*need at least 4"):
        fit_sparsing_law(D, np.array([0.1, 0.08, 0.075]), "relu")


def test_curve_going_the_wrong_way_never_gives_negative_a0():
    # A SiLU-like rising curve fitted with the (decreasing) ReLU law: ill-posed.
    D = np.linspace(1.0, 30.0, 12)
    A = 0.30 + 0.01 * np.log(D) + np.random.default_rng(3).normal(0, 1e-3, D.size)
    fit = fit_sparsing_law(D, A, "relu")
    assert (not fit.ok) or fit.params["A0"] >= 0.0


def test_bad_inputs_raise_clear_errors():
    D, A = np.linspace(1, 10, 8), np.linspace(0.1, 0.07, 8)
    with pytest.raises(LawFitError, match="unknown law"):
        fit_sparsing_law(D, A, "gelu")
    with pytest.raises(LawFitError, match="8 token values but 7"):
        fit_sparsing_law(D, A[:-1], "relu")
    with pytest.raises(LawFitError, match="too few points.*after skipping 6"):
        fit_sparsing_law(D, A, "relu", skip_first=6)
    with pytest.raises(LawFitError, match="unknown method"):
        fit_sparsing_law(D, A, "relu", method="dogbox")


def test_nonpositive_tokens_are_dropped_with_a_note():
    rng = np.random.default_rng(5)
    D = np.concatenate([[0.0], np.linspace(1, 40, 20)])
    A = law_value("silu", D[1:], dict(alpha=0.5, c=0.1, A0=0.4))
    A = np.concatenate([[0.2], A + rng.normal(0, 1e-4, A.size)])
    fit = fit_sparsing_law(D, A, "silu")
    assert fit.n_points == 20
    assert any("dropped 1 point" in w for w in fit.warnings)


@pytest.mark.parametrize(
    "law,params",
    [
        ("relu", dict(alpha=1.01, b=-3.49, c=7.97e-3, A0=0.0721)),
        ("silu", dict(alpha=0.479, b=None, c=0.102, A0=0.409)),
    ],
)
def test_derivative_matches_finite_differences(law, params):
    D = np.random.default_rng(11).uniform(1.0, 200.0, size=10)
    h = 1e-5 * D
    numeric = (law_value(law, D + h, params) - law_value(law, D - h, params)) / (2 * h)
    np.testing.assert_allclose(law_derivative(law, D, params), numeric, rtol=1e-5)


def test_sparsity_slope_smaller_model_converges_faster():
    small = fit_sparsing_law(*_ref("0.1b_relu"), "relu")
    large = fit_sparsing_law(*_ref("0.8b_relu"), "relu")
    ratio = np.array([50.0, 100.0, 200.0])
    s_small = sparsity_slope_vs_data_ratio(small, 1.08e8, ratio)
    s_large = sparsity_slope_vs_data_ratio(large, 7.60e8, ratio)
    assert np.all(s_small > 0) and np.all(s_large > 0)  # ReLU: sparsity grows with data
    assert np.all(s_small > s_large)
    with pytest.raises(WidthDepthError):
        sparsity_slope_vs_data_ratio(small, 0.0, ratio)


def _ref(name):
    c = load_reference_curve(name)
    return c.tokens_b, c.activation_ratio


def test_bottleneck_fit_recovers_linear_then_flat():
    rng = np.random.default_rng(21)
    ratios = np.array([1.8, 6.0, 14.2, 48.0, 74.7, 113.8, 164.6, 213.3, 281.6, 384.0, 597.3])
    true_a0 = 0.060 + 1.8e-4 * np.minimum(ratios, 114.0)
    fit = fit_bottleneck(ratios, true_a0 + rng.normal(0, 5e-5, ratios.size))
    assert fit.bottleneck == pytest.approx(114.0, rel=0.1)
    assert fit.slope == pytest.approx(1.8e-4, rel=0.1)
    assert fit.plateau == pytest.approx(0.060 + 1.8e-4 * 114.0, abs=5e-4)
    np.testing.assert_allclose(fit.predict(ratios), true_a0, atol=5e-4)
    with pytest.raises(WidthDepthError, match="at least 3"):
        fit_bottleneck([1.0, 2.0], [0.1, 0.2])


def test_scale_trend_log_linear():
    params = np.array([1.08e8, 2.41e8, 4.52e8, 7.60e8, 1.18e9])
    a0 = np.array([0.409, 0.390, 0.385, 0.383, 0.382])  # Table 2, SiLU
    trend = fit_scale_trend(params, a0)
    assert trend.slope_per_decade < 0  # SiLU limit falls with scale
    assert np.max(np.abs(trend.predict(params) - a0)) < 0.01
    with pytest.raises(WidthDepthError):
        fit_scale_trend([1e8, 1e8], [0.1, 0.2])


# ------------------------------------------------------------------------------ how sure
def _profile_statistic(law, D, A, a0, sse_min):
    """n·ln(SSE(a0)/SSE_min) with the other parameters refitted from many starts (a slow check)."""
    from megasparse.law.fit import PARAM_NAMES, default_starts, law_value
    from megasparse.law.uncertainty import _fit_others

    names = PARAM_NAMES[law]
    fn = lambda D_, *p: law_value(law, D_, dict(zip(names, p)))  # noqa: E731
    from megasparse.law import fit as fit_module

    starts = [np.asarray(s, dtype=float) for s in default_starts(law, D, A)]
    sse, _ = _fit_others(fn, fit_module._LAW_JACS[law], names, D, A, a0, starts)
    return D.size * np.log(sse / sse_min)


@pytest.mark.parametrize("name", ["0.1b_relu", "0.8b_relu"])
def test_a0_interval_is_the_profile_likelihood_one(name):
    curve = load_reference_curve(name)
    fit = fit_sparsing_law(curve.tokens_b, curve.activation_ratio, "relu")
    ci = fit.a0_interval
    assert ci is not None and not ci.low_open and not ci.high_open
    assert ci.low < fit.params["A0"] < ci.high
    # The paper's A0 (Table 2) lies inside; the 0.1B curve bounds A0 far less tightly than 0.8B's.
    assert ci.low < PAPER_TABLE2[name]["A0"] < ci.high
    # At both ends the likelihood-ratio statistic is χ²₁'s 95% quantile, 3.84, whatever the starts.
    for end in (ci.low, ci.high):
        assert _profile_statistic("relu", curve.tokens_b, curve.activation_ratio, end, fit.sse) == pytest.approx(
            3.841, abs=0.15
        )
    d = fit.to_dict()
    assert (d["A0_ci_low"], d["A0_ci_high"], d["A0_ci_open"], d["A0_ci_level"]) == (
        ci.low,
        ci.high,
        [False, False],
        0.95,
    )


def test_a0_interval_widths_and_asymmetry():
    wide = fit_sparsing_law(*_ref("0.1b_relu"), "relu").a0_interval
    narrow = fit_sparsing_law(*_ref("0.8b_relu"), "relu").a0_interval
    assert wide.high - wide.low > 4 * (narrow.high - narrow.low)
    silu = fit_sparsing_law(*_ref("0.1b_silu"), "silu", skip_first=5)
    # A rising curve bounds its limit well from below (the data) and weakly from above.
    assert silu.a0_interval.high - silu.params["A0"] > 3 * (silu.params["A0"] - silu.a0_interval.low)


def _ref(name):
    curve = load_reference_curve(name)
    return curve.tokens_b, curve.activation_ratio


def test_synthetic_truth_lies_in_the_interval():
    rng = np.random.default_rng(11)
    true = dict(alpha=0.7, c=0.15, A0=0.39, b=0.0)
    D = np.sort(rng.uniform(0.5, 120.0, size=40))
    hits = 0
    for seed in range(10):
        A = law_value("silu", D, true) + np.random.default_rng(seed).normal(0.0, 2e-3, size=D.size)
        ci = fit_sparsing_law(D, A, "silu").a0_interval
        hits += ci.low <= true["A0"] <= ci.high
    assert hits >= 8  # 95% coverage, allowing for 10 draws


def test_no_interval_without_spare_points():
    fit = fit_sparsing_law(np.array([1.0, 4.0, 16.0]), np.array([0.31, 0.355, 0.372]), "silu")
    assert fit.a0_interval is None and fit.to_dict()["A0_ci_low"] is None


@pytest.mark.parametrize("name,wrong", [("0.1b_relu", "silu"), ("0.1b_silu", "relu")])
def test_a_law_against_the_data_trend_warns(name, wrong):
    fit = fit_sparsing_law(*_ref(name), wrong)
    assert any(f"did you mean --law {PAPER_TABLE2[name]['law']}" in w for w in fit.warnings)
    right = fit_sparsing_law(*_ref(name), PAPER_TABLE2[name]["law"], skip_first=PAPER_TABLE2[name]["skip"])
    assert not any("did you mean" in w for w in right.warnings)

"""sts_lightning.experiment.analysis against independent numpy/scipy oracles."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from sts_lightning.experiment.analysis import (
    correlations,
    cross_task,
    fit_line,
    paired_delta,
    partial_correlation,
    sign_accuracy,
    summarise,
)

NAN_KEYS = ("pearson", "pearson_p", "spearman", "spearman_p", "kendall", "kendall_p")


def _items(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Summed NLL per item before/after and token counts: item-level noise on top of tokens."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 60, size=n).astype(float)
    before = counts * rng.normal(2.0, 0.3, size=n)
    after = before + counts * rng.normal(-0.1, 0.2, size=n) + rng.normal(0.0, 1.0, size=n)
    return before, after, counts


def test_paired_delta_matches_delta_method():
    before, after, counts = _items(30, seed=0)
    delta, se = paired_delta(before, after, counts)
    d = after - before
    assert delta == pytest.approx(d.sum() / counts.sum(), rel=1e-12)
    # Delta method for mean(d)/mean(c): gradient' · Cov(sample means) · gradient.
    cov = np.cov(np.vstack([d, counts])) / len(d)  # ddof=1 covariance of the two means
    grad = np.array([1.0, -delta]) / counts.mean()
    assert se == pytest.approx(math.sqrt(grad @ cov @ grad), rel=1e-10)


def test_paired_delta_matches_item_bootstrap():
    n = 40
    before, after, counts = _items(n, seed=1)
    _, se = paired_delta(before, after, counts)
    idx = np.random.default_rng(2).integers(0, n, size=(20_000, n))  # resample whole items
    d = after - before
    boot = d[idx].sum(axis=1) / counts[idx].sum(axis=1)
    # The bootstrap variance has no n/(n-1) small-sample factor.
    assert boot.std() == pytest.approx(se * math.sqrt((n - 1) / n), rel=0.03)


def test_paired_delta_unit_counts_is_sem():
    rng = np.random.default_rng(3)
    before, after = rng.normal(size=12), rng.normal(size=12)
    delta, se = paired_delta(before, after, np.ones(12))
    assert delta == pytest.approx(np.mean(after - before))
    assert se == pytest.approx(sps.sem(after - before), rel=1e-12)


def test_paired_delta_degenerate_and_bad_input():
    assert math.isnan(paired_delta([3.0], [2.0], [2])[1])
    assert paired_delta([1.0, 2.0], [1.0, 2.0], [1, 1]) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same length"):
        paired_delta([1.0, 2.0], [1.0], [1, 1])
    with pytest.raises(ValueError, match="at least one item"):
        paired_delta([], [], [])
    with pytest.raises(ValueError, match="counts"):
        paired_delta([1.0, 2.0], [1.0, 2.0], [1, -1])
    with pytest.raises(ValueError, match=r"`before`.*NaN"):
        paired_delta([math.nan, 2.0], [1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="`after` must be 1-D"):
        paired_delta([1.0], [[1.0]], [1])
    with pytest.raises(TypeError, match="`counts`"):
        paired_delta([1.0], [1.0], ["many"])


def _closed_form(x, y, z, corr) -> float:
    r_xy, r_xz, r_yz = corr(x, y)[0], corr(x, z)[0], corr(y, z)[0]
    return (r_xy - r_xz * r_yz) / math.sqrt((1 - r_xz**2) * (1 - r_yz**2))


def _xyz(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    x = 0.8 * z + rng.normal(size=n)
    return x, 0.5 * x - 0.7 * z + rng.normal(size=n), z


@pytest.mark.parametrize(
    ("method", "corr"), [("pearson", sps.pearsonr), ("spearman", sps.spearmanr)]
)
def test_partial_correlation_closed_form(method, corr):
    x, y, z = _xyz(25, seed=4)
    r, _ = partial_correlation(x, y, z, method=method)
    assert r == pytest.approx(_closed_form(x, y, z, corr), abs=1e-12)


def test_partial_correlation_p_equals_regression_t_test():
    """The partial-r test is the t-test of y's coefficient in the OLS fit x ~ 1 + z + y."""
    x, y, z = _xyz(15, seed=5)
    design = np.column_stack([np.ones(15), z, y])
    coef, rss, *_ = np.linalg.lstsq(design, x, rcond=None)
    cov = rss[0] / (15 - 3) * np.linalg.inv(design.T @ design)
    t = coef[2] / math.sqrt(cov[2, 2])
    _, p = partial_correlation(x, y, z)
    assert p == pytest.approx(2 * sps.t.sf(abs(t), 15 - 3), rel=1e-9)


def test_partial_correlation_removes_a_confounder():
    rng = np.random.default_rng(6)
    z = rng.normal(size=300)
    x, y = z + 0.3 * rng.normal(size=300), z + 0.3 * rng.normal(size=300)
    assert sps.pearsonr(x, y)[0] > 0.8
    r, p = partial_correlation(x, y, z)
    assert abs(r) < 0.15 and p > 0.01


def test_partial_correlation_degenerate_and_bad_input():
    z = np.array([0.0, 1.0, 2.0, 3.0, 5.0])
    y = np.array([1.0, -1.0, 2.0, 0.5, 0.0])
    assert all(math.isnan(v) for v in partial_correlation(2 * z + 1, y, z))  # x explained by z
    assert all(math.isnan(v) for v in partial_correlation(np.ones(5), y, z))
    assert partial_correlation(z, y, np.ones(5))[0] == pytest.approx(sps.pearsonr(z, y)[0])
    with pytest.raises(ValueError, match="n >= 4"):
        partial_correlation([1, 2, 3], [1, 3, 2], [0, 1, 1])
    with pytest.raises(ValueError, match="method"):
        partial_correlation(z, y, z, method="kendall")
    with pytest.raises(ValueError, match="same length"):
        partial_correlation(z, y[:4], z)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(4, 30),
    scale=st.floats(0.01, 100.0),
    negate=st.booleans(),
    shift=st.floats(-100.0, 100.0),
)
def test_partial_correlation_property(seed, n, scale, negate, shift):
    x, y, z = _xyz(n, seed)
    r, p = partial_correlation(x, y, z)
    assert r == pytest.approx(_closed_form(x, y, z, sps.pearsonr), abs=1e-9)
    a = -scale if negate else scale
    r2, p2 = partial_correlation(a * x + shift, y, z)  # affine in x: same |r|, sign of a
    assert r2 == pytest.approx(r * math.copysign(1.0, a), abs=1e-9)
    assert p2 == pytest.approx(p, abs=1e-9)


@pytest.mark.parametrize("absolute", [True, False])
def test_correlations_match_scipy(absolute):
    rng = np.random.default_rng(7)
    x = rng.normal(size=10)
    y = 0.7 * x + rng.normal(size=10)
    out = correlations(x, y, absolute=absolute, n_bootstrap=200, seed=1)
    yy = np.abs(y) if absolute else y
    for name, fn in [("pearson", sps.pearsonr), ("spearman", sps.spearmanr)]:
        assert out[name] == pytest.approx(fn(x, yy)[0], abs=1e-12)
        assert out[f"{name}_p"] == pytest.approx(fn(x, yy)[1], rel=1e-9)
    assert out["kendall"] == pytest.approx(sps.kendalltau(x, yy)[0], abs=1e-12)
    assert out["kendall_p"] == pytest.approx(sps.kendalltau(x, yy)[1], rel=1e-9)
    assert -1 <= out["pearson_ci_low"] <= out["pearson_ci_high"] <= 1
    assert (out["n"], out["n_dropped"]) == (10, 0)
    assert all(isinstance(out[k], float) for k in NAN_KEYS)


def test_correlations_drop_non_finite_pairwise():
    x = np.array([0.1, math.nan, 0.3, 0.4, 0.5, 0.6])
    y = np.array([1.0, 2.0, 2.5, math.inf, 3.0, 5.0])
    out = correlations(x, y, n_bootstrap=50)
    assert (out["n"], out["n_dropped"]) == (4, 2)
    keep = [0, 2, 4, 5]
    assert out["spearman"] == pytest.approx(sps.spearmanr(x[keep], y[keep])[0])


def test_correlations_degenerate_give_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant = correlations([1.0, 2.0, 3.0, 4.0], [2.0, -2.0, 2.0, 2.0], n_bootstrap=20)
        too_few = correlations([1.0, 2.0, math.nan], [1.0, 3.0, 2.0])
    assert all(math.isnan(constant[k]) for k in NAN_KEYS) and constant["n"] == 4
    assert all(math.isnan(too_few[k]) for k in NAN_KEYS) and too_few["n"] == 2
    with pytest.raises(ValueError, match="same length"):
        correlations([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="n_bootstrap"):
        correlations([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], n_bootstrap=0)


def test_cross_task_cancels_a_per_domain_factor():
    rng = np.random.default_rng(8)
    doms = [f"d{i}" for i in range(12)]
    sa, sb = rng.uniform(0.1, 2.0, 12), rng.uniform(0.1, 2.0, 12)
    k = np.exp(rng.normal(0.0, 2.0, 12))  # how much each domain moves, whatever the task
    sign = rng.choice([-1.0, 1.0], 12)
    ra, rb = sign * k * sa**1.5, -sign * k * sb**1.5
    out = cross_task(*(dict(zip(doms, v, strict=True)) for v in (sa, sb, ra, rb)))
    assert out["x"] == pytest.approx(dict(zip(doms, np.log(sa / sb), strict=True)))
    assert out["y"] == pytest.approx(dict(zip(doms, 1.5 * np.log(sa / sb), strict=True)))
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)
    assert (out["n"], out["n_excluded"]) == (12, 0) and "n_dropped" not in out
    assert sps.spearmanr(sa, np.abs(ra))[0] < 0.9  # raw: the domain factor swamps the score


def test_cross_task_exclusions_and_bad_input():
    good = {"a": (1.0, 2.0, 0.5, -0.1), "b": (2.0, 1.0, 0.2, 0.3), "c": (3.0, 1.0, -1.0, 0.1)}
    bad = {
        "zero_score": (1.0, 0.0, 1.0, 1.0),
        "neg_score": (-1.0, 1.0, 1.0, 1.0),
        "zero_real": (1.0, 1.0, 0.0, 1.0),
        "nan_real": (1.0, 1.0, 1.0, math.nan),
        "inf_score": (math.inf, 1.0, 1.0, 1.0),
    }
    rows = {**good, **bad}
    args = [{d: v[i] for d, v in rows.items()} for i in range(4)]
    out = cross_task(*args)
    assert set(out["x"]) == set(good) == set(out["y"])
    assert (out["n"], out["n_excluded"]) == (3, 5)
    assert out["y"]["a"] == pytest.approx(math.log(0.5 / 0.1))
    two = cross_task(*[{d: v[i] for d, v in list(good.items())[:2]} for i in range(4)])
    assert two["n"] == 2 and all(math.isnan(two[k]) for k in NAN_KEYS)
    with pytest.raises(ValueError, match="realised_b"):
        cross_task(args[0], args[1], args[2], {"a": 1.0})
    with pytest.raises(TypeError, match="score_a"):
        cross_task([1.0], args[1], args[2], args[3])


def test_sign_accuracy_by_hand_and_by_loop():
    scores = [1.0, -1.0, 2.0, -2.0, 0.0, 3.0]
    deltas = [-0.5, 0.3, -0.2, -0.1, -1.0, 0.0]  # the last two are excluded (a zero)
    assert sign_accuracy(scores, deltas) == {"accuracy": 0.75, "majority": 0.75, "n": 4}
    s_map, d_map = (dict(zip("abcdef", v, strict=True)) for v in (scores, deltas))
    assert sign_accuracy(s_map, d_map) == sign_accuracy(scores, deltas)
    rng = np.random.default_rng(9)
    s, d = rng.normal(size=50), rng.normal(size=50)
    hits = sum((si > 0 and di < 0) or (si < 0 and di > 0) for si, di in zip(s, d, strict=True))
    out = sign_accuracy(s, d)
    assert out["accuracy"] == hits / 50 and out["n"] == 50
    assert out["majority"] == max(np.sum(d > 0), np.sum(d < 0)) / 50


def test_sign_accuracy_degenerate_and_bad_input():
    out = sign_accuracy([0.0, 1.0], [1.0, 0.0])
    assert out["n"] == 0 and math.isnan(out["accuracy"]) and math.isnan(out["majority"])
    with pytest.raises(ValueError, match="same length"):
        sign_accuracy([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="realised"):
        sign_accuracy({"a": 1.0}, {"b": 1.0})


def test_summarise():
    vals = [0.3, math.nan, 0.5, 0.9]
    out = summarise(vals)
    assert out["mean"] == pytest.approx(np.nanmean(vals))
    assert out["std"] == pytest.approx(np.nanstd(vals, ddof=1))
    assert out["n"] == 3 and len(out["values"]) == 4 and math.isnan(out["values"][1])
    assert math.isnan(summarise([2.0])["std"]) and summarise([2.0])["mean"] == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = summarise([math.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["std"])
    with pytest.raises(ValueError, match="values"):
        summarise([[1.0, 2.0]])


def test_fit_line():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=20), rng.normal(size=20)
    assert fit_line(x, y) == pytest.approx(tuple(np.polyfit(x, y, 1)), abs=1e-12)
    x[3], y[7] = math.nan, math.inf
    keep = np.isfinite(x) & np.isfinite(y)
    assert fit_line(x, y) == pytest.approx(tuple(np.polyfit(x[keep], y[keep], 1)), abs=1e-12)
    assert all(math.isnan(v) for v in fit_line([1.0], [2.0]))
    assert all(math.isnan(v) for v in fit_line([1.0, 1.0, 1.0], [2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="same length"):
        fit_line([1.0, 2.0], [1.0])

"""sts_lightning.reliability and sts_lightning.paired against independent oracles.

Oracles: closed forms of classical test theory (reliability of a mean of n items), a one-way
ANOVA intraclass correlation computed here, the rank correlation of a bivariate normal, scipy,
hand computations, published worked examples of Williams' t and Steiger's Z, and Monte-Carlo
calibration under the null.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from sts_lightning.experiment import analysis
from sts_lightning.paired import (
    DomainItems,
    _resample,
    paired_bootstrap_diff,
    steiger_z,
    williams_test,
)
from sts_lightning.reliability import (
    correlate_rows,
    noise_ceiling,
    reliability_of_mean,
    sign_accuracy,
    spearman_brown,
    split_half_reliability,
)


def _domains(n_domains, n_items, sd_true, sd_error, seed):
    """Items x_di = t_d + e_di: flat values, labels, and the (D, n) matrix."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, sd_true, n_domains)
    x = true[:, None] + rng.normal(0.0, sd_error, (n_domains, n_items))  # (D, n)
    return x.ravel(), np.repeat(np.arange(n_domains), n_items), x


# --- split-half reliability ---------------------------------------------------------------


@pytest.mark.parametrize(("n_items", "sd_error"), [(10, 2.0), (4, 0.5), (20, 6.0)])
def test_split_half_matches_the_closed_form(n_items, sd_error):
    values, labels, _ = _domains(2000, n_items, 1.0, sd_error, seed=n_items)
    out = split_half_reliability(values, labels)
    expected = reliability_of_mean(1.0, sd_error**2, n_items)
    # The sampling SD of the estimate over 2000 domains is about 0.01.
    assert out["reliability"] == pytest.approx(expected, abs=0.03)
    assert out["n_domains"] == 2000 and out["n_items"] == 2000 * n_items
    assert out["n_splits"] == 200 and 0 < out["std"] < 0.05


def test_split_half_matches_the_anova_intraclass_correlation_of_the_same_sample():
    """ICC(1,k) = 1 − MSW/MSB estimates the reliability of the domain mean from one sample."""
    values, labels, x = _domains(300, 12, 1.0, 3.0, seed=5)
    n = x.shape[1]
    msb = n * x.mean(1).var(ddof=1)
    msw = x.var(1, ddof=1).mean()
    out = split_half_reliability(values, labels, n_splits=400)
    assert out["reliability"] == pytest.approx(1 - msw / msb, abs=0.015)


def test_spearman_split_half_matches_the_rank_correlation_of_normals():
    """For a bivariate normal with correlation ρ, Spearman's ρ_s = (6/π)·asin(ρ/2)."""
    n_items, sd_error = 8, 1.5
    values, labels, _ = _domains(3000, n_items, 1.0, sd_error, seed=1)
    out = split_half_reliability(values, labels, method="spearman")
    rho_half = 1.0 / (1.0 + sd_error**2 / (n_items / 2))
    expected = spearman_brown(6 / math.pi * math.asin(rho_half / 2))
    assert out["reliability"] == pytest.approx(expected, abs=0.03)


def _token_items(seed):
    """Items are means over w tokens of noise σ: an item's error variance is σ²/w."""
    rng = np.random.default_rng(seed)
    weights = np.tile(np.arange(1.0, 5.0), (2000, 10))  # (D, 40), 100 tokens per domain
    true = rng.normal(0.0, 1.0, 2000)
    x = true[:, None] + rng.normal(size=weights.shape) * 10.0 / np.sqrt(weights)
    return x.ravel(), np.repeat(np.arange(2000), 40), weights.ravel()


def test_token_weighted_split_half_matches_the_token_closed_form():
    values, labels, weights = _token_items(seed=0)
    weighted = split_half_reliability(values, labels, weights=weights)["reliability"]
    plain = split_half_reliability(values, labels)["reliability"]
    # 100 tokens of noise variance 100 per domain: σ_t² / (σ_t² + 100/100) = 0.5.
    assert weighted == pytest.approx(reliability_of_mean(1.0, 100.0, 100), abs=0.03)
    assert weighted > plain + 0.03  # the token mean beats the plain item mean here


def test_equal_weights_are_the_unweighted_estimate():
    values, labels, _ = _domains(50, 6, 1.0, 1.0, seed=3)
    plain = split_half_reliability(values, labels, seed=7)
    weighted = split_half_reliability(values, labels, weights=np.full(300, 3.0), seed=7)
    assert weighted["reliability"] == pytest.approx(plain["reliability"], rel=1e-12)


def test_split_half_edge_cases():
    # No item noise: both halves equal the domain means, reliability exactly 1.
    values = np.repeat([1.0, 3.0, 2.0, 5.0], 4)
    labels = np.repeat(["a", "b", "c", "d"], 4)
    assert split_half_reliability(values, labels)["reliability"] == pytest.approx(1.0)
    # No domain signal: reliability about 0.
    noise, labels2, _ = _domains(500, 10, 0.0, 1.0, seed=2)
    assert abs(split_half_reliability(noise, labels2)["reliability"]) < 0.1
    # All items equal: every half vector is constant, no split has a correlation.
    out = split_half_reliability(np.ones(8), list("aabbccdd"))
    assert out["n_splits"] == 0 and math.isnan(out["reliability"]) and math.isnan(out["std"])
    # Same seed, same answer; labels in any order.
    v, lab, _ = _domains(30, 5, 1.0, 1.0, seed=4)
    assert split_half_reliability(v, lab) == split_half_reliability(v, lab)
    order = np.random.default_rng(0).permutation(len(v))
    shuffled = split_half_reliability(v[order], lab[order])["reliability"]
    assert shuffled == pytest.approx(split_half_reliability(v, lab)["reliability"], abs=0.05)


def test_split_half_bad_input():
    with pytest.raises(ValueError, match="one length"):
        split_half_reliability([1.0, 2.0, 3.0], ["a", "b"])
    with pytest.raises(ValueError, match="at least 3 domains"):
        split_half_reliability([1.0, 2.0, 3.0, 4.0], ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=r"\['c'\] have 1"):
        split_half_reliability([1.0, 2.0, 3.0, 4.0, 5.0], ["a", "a", "b", "b", "c"])
    with pytest.raises(ValueError, match="`weights` must be positive"):
        split_half_reliability(np.ones(6), list("aabbcc"), weights=[1, 1, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="`values` contains NaN"):
        split_half_reliability([1.0, math.nan, 1.0, 1.0, 1.0, 1.0], list("aabbcc"))
    with pytest.raises(ValueError, match="`method`"):
        split_half_reliability(np.ones(6), list("aabbcc"), method="kendall")
    with pytest.raises(ValueError, match="`n_splits`"):
        split_half_reliability(np.ones(6), list("aabbcc"), n_splits=0)


# --- small formulas -----------------------------------------------------------------------


def test_spearman_brown_and_reliability_of_mean_by_hand():
    assert spearman_brown(0.5) == pytest.approx(2 / 3)
    assert spearman_brown(0.25, factor=3) == pytest.approx(0.75 / 1.5)
    assert spearman_brown(spearman_brown(0.6), factor=0.5) == pytest.approx(0.6)  # inverse
    assert spearman_brown(-0.2) == pytest.approx(-0.4 / 0.8)
    # Doubling the items is Spearman–Brown with factor 2 on the closed form.
    assert reliability_of_mean(1.0, 4.0, 20) == pytest.approx(
        spearman_brown(reliability_of_mean(1.0, 4.0, 10))
    )
    assert reliability_of_mean(2.0, 0.0, 3) == 1.0 and math.isnan(reliability_of_mean(0, 0, 3))
    with pytest.raises(ValueError, match="n_items"):
        reliability_of_mean(1.0, 1.0, 0)


def test_noise_ceiling_by_hand_and_by_simulation():
    assert noise_ceiling(0.64, 0.25) == pytest.approx(0.4)
    assert noise_ceiling(-0.3, 0.9) == 0.0 and noise_ceiling(1.0, 1.0) == 1.0
    assert math.isnan(noise_ceiling(math.nan, 0.5)) and math.isnan(noise_ceiling(0.5, math.nan))
    with pytest.raises(ValueError, match="at most 1"):
        noise_ceiling(1.2, 0.5)
    # Two noisy measures of the same true vector correlate at √(rel_x · rel_y) (attenuation).
    rng = np.random.default_rng(0)
    true = rng.normal(size=200_000)
    x, y = true + rng.normal(0, 0.5, true.size), true + rng.normal(0, 1.5, true.size)
    r = np.corrcoef(x, y)[0, 1]
    assert r == pytest.approx(noise_ceiling(1 / 1.25, 1 / 3.25), abs=0.01)


def test_correlate_rows_matches_scipy_row_by_row():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(20, 9)).astype(float)  # ties on purpose
    y = x + rng.normal(size=(20, 9))
    pearson = correlate_rows(x, y)
    spearman = correlate_rows(x, y, method="spearman")
    for i in range(20):
        assert pearson[i] == pytest.approx(sps.pearsonr(x[i], y[i]).statistic)
        assert spearman[i] == pytest.approx(sps.spearmanr(x[i], y[i]).statistic)
    x[3] = 2.0
    assert math.isnan(correlate_rows(x, y)[3]) and np.isfinite(correlate_rows(x, y)[4])
    with pytest.raises(ValueError, match="same shape"):
        correlate_rows(np.ones((2, 3)), np.ones((2, 4)))


def test_sign_accuracy_by_hand():
    assert sign_accuracy([1.0, -1.0, 2.0, -2.0], [0.5, 0.3, 0.2, -0.1]) == 0.75
    # Zeros and non-finite values leave; what remains decides.
    assert sign_accuracy([1.0, -1.0, 0.0, math.nan, 3.0], [1.0, -1.0, 1.0, 1.0, 0.0]) == 1.0
    assert math.isnan(sign_accuracy([1.0, 2.0, 3.0], [1.0, -1.0, 1.0]))  # one-sign predictor
    assert math.isnan(sign_accuracy([0.0, 0.0], [1.0, -1.0]))  # nothing left
    with pytest.raises(ValueError, match="one length"):
        sign_accuracy([1.0, -1.0], [1.0])


def test_experiment_sign_accuracy_uses_the_undefined_rule():
    """The report's sign accuracy (positive score → lower loss) is NaN for a one-sign score."""
    out = analysis.sign_accuracy([1.0, 2.0, 0.5], [-0.1, 0.2, -0.3])
    assert math.isnan(out["accuracy"]) and out["majority"] == pytest.approx(2 / 3)
    s, d = [1.0, -2.0, 0.5, 3.0], [-0.1, 0.2, 0.3, -0.4]
    assert analysis.sign_accuracy(s, d)["accuracy"] == sign_accuracy(s, -np.asarray(d))


# --- dependent correlations: Williams' t and Steiger's Z ----------------------------------


def test_williams_and_steiger_match_published_examples():
    # Silver, Hittner & May (2006), DEPCOR, Applied Psychological Measurement 30:152-153, as
    # used in the test suite of the R package cocor (Diedenhofen & Musch 2015, PLoS ONE
    # 10:e0121945): r_jk=.3, r_jh=.4, r_kh=.5, n=100 → Williams t = −1.0767 (p = .2843),
    # Steiger Z = −1.0718 (p = .2838).
    t, p = williams_test(0.3, 0.4, 0.5, 100)
    assert round(t, 4) == -1.0767 and round(p, 4) == 0.2843
    z, p = steiger_z(0.3, 0.4, 0.5, 100)
    assert round(z, 4) == -1.0718 and round(p, 4) == 0.2838
    # Steiger (1980), Psychological Bulletin 87:245-251, case A (p. 249): r_jk=.4, r_jh=.5,
    # r_kh=.1, n=103 → Z = −.8887 (the paper prints −.8913, having rounded a covariance to
    # .0042; cocor reproduces −0.8887185 from the formula).
    z, _ = steiger_z(0.4, 0.5, 0.1, 103)
    assert z == pytest.approx(-0.8887185, abs=1e-7)


def test_dependent_tests_are_antisymmetric():
    t1, p1 = williams_test(0.6, 0.2, 0.3, 40)
    t2, p2 = williams_test(0.2, 0.6, 0.3, 40)
    assert t1 == pytest.approx(-t2) and p1 == pytest.approx(p2) and t1 > 0
    z1, q1 = steiger_z(0.6, 0.2, 0.3, 40)
    assert steiger_z(0.2, 0.6, 0.3, 40) == pytest.approx((-z1, q1))
    assert williams_test(0.4, 0.4, 0.2, 30) == (0.0, 1.0)


def test_dependent_tests_hold_their_size_under_the_null():
    """Monte Carlo: ρ_jk = ρ_jh = .4, ρ_kh = .5, n = 40: about 5 % rejections at α = .05."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.4, 0.4], [0.4, 1.0, 0.5], [0.4, 0.5, 1.0]])
    reps, n = 3000, 40
    data = rng.normal(size=(reps, n, 3)) @ np.linalg.cholesky(cov).T  # (reps, n, 3)
    data -= data.mean(1, keepdims=True)
    c = np.einsum("rni,rnj->rij", data, data)  # (reps, 3, 3)
    r = c / np.sqrt(np.einsum("rii->ri", c)[:, :, None] * np.einsum("rii->ri", c)[:, None, :])
    for test in (williams_test, steiger_z):
        p = np.array([test(r[i, 0, 1], r[i, 0, 2], r[i, 1, 2], n)[1] for i in range(reps)])
        assert 0.035 < (p < 0.05).mean() < 0.065  # binomial SD of the rate ≈ 0.004


def test_dependent_tests_bad_input():
    with pytest.raises(ValueError, match="`r_kh`"):
        williams_test(0.3, 0.4, 1.5, 50)
    with pytest.raises(ValueError, match="`r_jk`"):
        steiger_z(math.nan, 0.4, 0.5, 50)
    with pytest.raises(ValueError, match="`n`"):
        williams_test(0.3, 0.4, 0.5, 3)
    with pytest.raises(ValueError, match="valid correlation matrix"):
        steiger_z(0.9, -0.9, 0.9, 50)
    with pytest.raises(ValueError, match="strictly inside"):
        steiger_z(1.0, 0.4, 0.4, 50)


# --- two-stage paired bootstrap ------------------------------------------------------------


def _items(means, n_items, sd, seed):
    rng = np.random.default_rng(seed)
    return [m + rng.normal(0.0, sd, n_items) for m in means]


def test_bootstrap_point_estimates_are_scipy_on_the_domain_means():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=12), rng.normal(size=12)
    values = _items(a + rng.normal(size=12), 6, 1.0, seed=1)
    weights = [rng.integers(1, 9, size=6).astype(float) for _ in range(12)]
    target = DomainItems(values, weights)
    means = np.array([np.sum(v * w) / np.sum(w) for v, w in zip(values, weights, strict=True)])
    assert target.means() == pytest.approx(means)
    for method, f in (("spearman", sps.spearmanr), ("pearson", sps.pearsonr)):
        out = paired_bootstrap_diff(a, b, target, method=method, n_boot=50)
        r_a, r_b = f(a, means).statistic, f(b, means).statistic
        assert (out["r_a"], out["r_b"]) == pytest.approx((r_a, r_b))
        assert out["diff"] == pytest.approx(r_a - r_b)


def test_bootstrap_symmetry_identity_and_seed():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=10), rng.normal(size=10)
    target = DomainItems(_items(a, 5, 1.0, seed=2))
    ab = paired_bootstrap_diff(a, b, target, n_boot=300)
    ba = paired_bootstrap_diff(b, a, target, n_boot=300)
    assert ba["diff"] == pytest.approx(-ab["diff"]) and ba["p"] == pytest.approx(ab["p"])
    assert ba["ci"] == pytest.approx((-ab["ci"][1], -ab["ci"][0]))
    assert paired_bootstrap_diff(a, b, target, n_boot=300) == ab
    same = paired_bootstrap_diff(a, a, target, n_boot=300)
    assert same["diff"] == 0.0 and same["ci"] == (0.0, 0.0) and same["p"] == 1.0


@pytest.mark.parametrize("b_is_as_good", [True, False])
def test_bootstrap_agrees_with_williams_on_fixed_vectors(b_is_as_good):
    """Many domains, no item level: the bootstrap and the asymptotic test agree."""
    rng = np.random.default_rng(0)
    t, shared = rng.normal(size=300), rng.normal(size=300)
    a = 0.6 * t + 0.5 * shared + 0.6 * rng.normal(size=300)
    b = (0.6 if b_is_as_good else 0.0) * t + 0.5 * shared + 0.6 * rng.normal(size=300)
    out = paired_bootstrap_diff(a, b, t, method="pearson", n_boot=2000)
    r = np.corrcoef([t, a, b])
    _, p_williams = williams_test(r[0, 1], r[0, 2], r[1, 2], 300)
    assert out["p"] == pytest.approx(p_williams, abs=0.1)
    assert out["ci"][0] < out["diff"] < out["ci"][1]
    if b_is_as_good:
        assert out["p"] > 0.05 and out["ci"][0] < 0 < out["ci"][1]
    else:
        assert out["p"] < 0.01 and out["ci"][0] > 0


def test_resample_stages():
    rng = np.random.default_rng(3)
    a = rng.normal(size=15)
    b = a + rng.normal(0.0, 0.7, 15)
    # Items all equal within a domain: drawing them changes nothing, so "domains+items" is
    # exactly "domains" (same seed, same domain draws) and "items" has no spread at all.
    flat = DomainItems([np.full(6, m) for m in a + rng.normal(0, 0.3, 15)])
    both = paired_bootstrap_diff(a, b, flat, n_boot=500)
    assert both == paired_bootstrap_diff(a, b, flat, n_boot=500, resample="domains")
    assert both == paired_bootstrap_diff(a, b, flat.means(), n_boot=500)
    fixed = paired_bootstrap_diff(a, b, flat, n_boot=500, resample="items", method="pearson")
    assert fixed["ci"][0] == pytest.approx(fixed["diff"]) == pytest.approx(fixed["ci"][1])
    # With fixed domains the interval grows with the item noise.
    width = []
    for sd in (0.3, 3.0):
        noisy = DomainItems(_items(flat.means(), 10, sd, seed=4))
        ci = paired_bootstrap_diff(a, b, noisy, n_boot=500, resample="items")["ci"]
        width.append(ci[1] - ci[0])
    assert width[1] > 2 * width[0] > 0


def test_stage_two_resamples_items_as_the_bootstrap_of_a_mean():
    """Resampled means of a domain vary as the bootstrap of its mean: var_pop / n_d."""
    rng = np.random.default_rng(5)
    values = [rng.normal(0, s, n) for s, n in ((1.0, 20), (2.0, 50), (0.5, 8))]
    target = DomainItems(values)
    fixed = DomainItems(np.arange(3.0)[:, None])
    boot = _resample(
        {"pred_a": fixed, "pred_b": fixed, "target": target}, 4000, True, np.random.default_rng(0)
    )
    for d, v in enumerate(values):
        in_d = boot["pred_a"] == d  # the fixed vector tells which domain filled each slot
        got = boot["target"][in_d]
        assert got.mean() == pytest.approx(v.mean(), abs=4 * v.std() / math.sqrt(len(got)))
        assert got.var() == pytest.approx(v.var() / len(v), rel=0.1)
    # Paired items share indices: a predictor made of the target's own items tracks it exactly.
    twin = _resample(
        {"pred_a": target, "pred_b": fixed, "target": target}, 200, True, np.random.default_rng(1)
    )
    assert np.array_equal(twin["pred_a"], twin["target"])


def test_same_items_are_drawn_together():
    """Two predictors made of the target's own items: paired, they never differ."""
    target = DomainItems(_items(np.arange(8.0), 12, 2.0, seed=7))
    kw = {"n_boot": 300, "method": "pearson"}
    paired = paired_bootstrap_diff(target, target, target, **kw)
    assert paired["ci"] == (0.0, 0.0) and paired["p"] == 1.0
    apart = paired_bootstrap_diff(target, target, target, same_items=False, **kw)
    assert apart["diff"] == 0.0 and apart["ci"][0] < 0 < apart["ci"][1]


def test_bootstrap_bad_input():
    items = DomainItems([[1.0, 2.0], [2.0, 3.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="same domains"):
        paired_bootstrap_diff([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0], items)
    with pytest.raises(ValueError, match="at least 3 domains"):
        paired_bootstrap_diff([1.0, 2.0], [2.0, 1.0], [1.0, 3.0])
    with pytest.raises(ValueError, match=r"`values` \[1\] are empty"):
        DomainItems([[1.0], [], [2.0]])
    with pytest.raises(ValueError, match="`weights` must be positive"):
        DomainItems([[1.0], [2.0]], weights=[[0.0], [1.0]])
    with pytest.raises(ValueError, match="shaped like"):
        DomainItems([[1.0], [2.0]], weights=[[1.0, 1.0], [1.0]])
    with pytest.raises(ValueError, match="same_items=False"):
        paired_bootstrap_diff(DomainItems([[1.0], [2.0], [3.0]]), [1, 2, 3], items)
    with pytest.raises(ValueError, match="`level`"):
        paired_bootstrap_diff([1, 2, 3], [3, 2, 1], items, level=1.0)
    with pytest.raises(ValueError, match="`n_boot`"):
        paired_bootstrap_diff([1, 2, 3], [3, 2, 1], items, n_boot=0)
    with pytest.raises(ValueError, match="`method`"):
        paired_bootstrap_diff([1, 2, 3], [3, 2, 1], items, method="kendall")
    with pytest.raises(ValueError, match="`resample`"):
        paired_bootstrap_diff([1, 2, 3], [3, 2, 1], items, resample="tokens")
    with pytest.raises(ValueError, match="`pred_a` contains NaN"):
        paired_bootstrap_diff([1, math.nan, 3], [3, 2, 1], items)


def test_transform_applies_to_each_half():
    """Negating both halves leaves every correlation unchanged; |.| of positive means is the
    identity; |.| of a vector whose sign carries the signal destroys it."""
    rng = np.random.default_rng(3)
    domains = np.repeat(np.arange(12), 20)
    truth = rng.normal(0.0, 1.0, 12) + 5.0  # every domain mean positive
    x = truth[domains] + rng.normal(0.0, 1.0, len(domains))
    plain = split_half_reliability(x, domains, n_splits=50)["reliability"]
    assert split_half_reliability(x, domains, n_splits=50, transform=np.negative)[
        "reliability"
    ] == pytest.approx(plain)
    assert split_half_reliability(x, domains, n_splits=50, transform=np.abs)[
        "reliability"
    ] == pytest.approx(plain)
    centred = x - 5.0  # means now straddle 0: |mean| keeps only part of the ranking
    signed = split_half_reliability(centred, domains, n_splits=50)["reliability"]
    absolute = split_half_reliability(centred, domains, n_splits=50, transform=np.abs)
    assert signed == pytest.approx(plain) and absolute["reliability"] < signed


def test_bootstrap_target_transform_correlates_with_abs():
    target = DomainItems([[-3.0, -3.2], [1.0, 1.1], [-2.0, -2.1], [0.1, 0.2], [4.0, 4.2]])
    magnitude = [3.1, 1.05, 2.05, 0.15, 4.1]
    out = paired_bootstrap_diff(magnitude, [1, 2, 3, 4, 5], target, n_boot=200,
                                target_transform=np.abs)  # fmt: skip
    assert out["r_a"] == pytest.approx(1.0)  # Spearman of |Δ| with its own magnitude
    plain = paired_bootstrap_diff(magnitude, [1, 2, 3, 4, 5], target, n_boot=200)
    assert plain["r_a"] < 0.5

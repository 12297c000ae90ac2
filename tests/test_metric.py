"""TransferabilityCorrelation against scipy.stats and np.corrcoef."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from sts_lightning import TransferabilityCorrelation

# Realised |Δacc| of Qwen2.5-7B after LIMO SFT on 8 MMLU-Pro categories (the released notebook).
NOTEBOOK_Y = [0.0980, 0.0636, 0.0524, 0.0488, 0.0130, 0.0037, 0.0026, 0.0019]


def _data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, 0.6 * x + rng.normal(size=n)


@pytest.mark.parametrize("n", [3, 8, 25])
@pytest.mark.parametrize("absolute", [True, False])
@pytest.mark.parametrize("n_updates", [1, 3])
def test_matches_scipy(n, absolute, n_updates):
    x, y = _data(n, seed=n)
    metric = TransferabilityCorrelation(absolute=absolute)
    for xs, ys in zip(np.array_split(x, n_updates), np.array_split(y, n_updates), strict=True):
        metric.update(torch.from_numpy(xs), torch.from_numpy(ys))
    out = metric.compute()
    yy = np.abs(y) if absolute else y
    for name, fn in [
        ("pearson", sps.pearsonr),
        ("spearman", sps.spearmanr),
        ("kendall", sps.kendalltau),
    ]:
        ref = fn(x, yy)
        np.testing.assert_allclose(out[name].item(), ref[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out[f"{name}_p"].item(), ref[1], rtol=1e-8, atol=1e-12)
    assert int(out["n"]) == n


def test_scalar_updates_and_notebook_values_match_corrcoef():
    x = np.random.default_rng(0).uniform(size=8)
    metric = TransferabilityCorrelation()
    for xi, yi in zip(x, NOTEBOOK_Y, strict=True):
        metric.update(torch.tensor(xi, dtype=torch.float64), torch.tensor(yi, dtype=torch.float64))
    out = metric.compute()
    np.testing.assert_allclose(out["pearson"].item(), np.corrcoef(x, NOTEBOOK_Y)[0, 1], rtol=1e-12)
    # Spearman is Pearson of the ranks (no ties here).
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(NOTEBOOK_Y))
    np.testing.assert_allclose(out["spearman"].item(), np.corrcoef(rx, ry)[0, 1], rtol=1e-12)


def test_ci_contains_estimate_and_is_seeded():
    x, y = _data(8, seed=1)

    def ci(seed):
        m = TransferabilityCorrelation(absolute=False, seed=seed)
        m.update(torch.from_numpy(x), torch.from_numpy(y))
        out = m.compute()
        return out["pearson_ci_low"].item(), out["pearson"].item(), out["pearson_ci_high"].item()

    low, r, high = ci(seed=0)
    assert -1 <= low <= r <= high <= 1
    assert ci(seed=0) == (low, r, high)
    assert ci(seed=1) != (low, r, high)


def test_ci_coverage_of_known_correlation():
    # A percentile bootstrap CI should cover the population r = 0.6 most of the time at n = 40.
    rho, hits = 0.6, 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        x = rng.normal(size=40)
        y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=40)
        m = TransferabilityCorrelation(absolute=False, n_bootstrap=500, seed=seed)
        m.update(torch.from_numpy(x), torch.from_numpy(y))
        out = m.compute()
        hits += out["pearson_ci_low"].item() <= rho <= out["pearson_ci_high"].item()
    assert hits >= 32  # nominal 38/40; percentile CIs undercover slightly at small n


def test_state_dict_round_trip_and_reset():
    x, y = _data(6, seed=2)
    m = TransferabilityCorrelation()
    m.persistent(True)
    m.update(torch.from_numpy(x), torch.from_numpy(y))
    restored = TransferabilityCorrelation()
    restored.persistent(True)
    restored.load_state_dict(m.state_dict())
    assert restored.compute()["pearson"].item() == m.compute()["pearson"].item()
    m.reset()
    with pytest.raises(ValueError, match="n=0"):
        m.compute()


def test_fewer_than_three_domains_raise():
    m = TransferabilityCorrelation()
    m.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
    with pytest.raises(ValueError, match="at least 3 domains"):
        m.compute()


def test_constant_input_is_nan_with_warning():
    m = TransferabilityCorrelation()
    m.update(torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.1, 0.5, 0.2, 0.9]))
    with pytest.warns(RuntimeWarning, match="`predicted` is constant"):
        out = m.compute()
    assert all(torch.isnan(out[k]) for k in ("pearson", "spearman", "kendall", "pearson_p"))
    assert int(out["n"]) == 4


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.ones(3), torch.ones(4)), ValueError, "one value per domain"),
        ((torch.ones(2, 2), torch.ones(2, 2)), ValueError, "1-D"),
        ((torch.tensor([1.0, float("nan")]), torch.ones(2)), ValueError, "predicted"),
        ((torch.tensor([True, False]), torch.ones(2)), TypeError, "real-valued"),
    ],
)
def test_bad_updates(args, error, match):
    with pytest.raises(error, match=match):
        TransferabilityCorrelation().update(*args)


def test_bad_construction():
    with pytest.raises(ValueError, match="confidence"):
        TransferabilityCorrelation(confidence=1.5)
    with pytest.raises(ValueError, match="n_bootstrap"):
        TransferabilityCorrelation(n_bootstrap=0)


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=3, max_size=30)
)
def test_properties(values):
    x, y = map(np.array, zip(*values, strict=True))
    m = TransferabilityCorrelation(absolute=False, n_bootstrap=200)
    m.update(torch.from_numpy(x), torch.from_numpy(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = m.compute()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert torch.isnan(out["pearson"])
    else:
        for k in ("pearson", "spearman", "kendall"):
            assert -1 - 1e-9 <= out[k].item() <= 1 + 1e-9
            assert 0 <= out[f"{k}_p"].item() <= 1

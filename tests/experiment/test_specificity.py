"""Task-specificity: double-centring, inter-task r, interaction reliability, across-tasks r."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from sts_lightning.experiment.across_tasks import (
    across_tasks,
    across_tasks_paired,
    resample_matrices,
)
from sts_lightning.experiment.delta_items import DeltaItems
from sts_lightning.experiment.specificity import (
    double_centre,
    halves_reliability,
    inter_task_r,
    interaction_reliability,
    task_specificity,
)


def test_double_centre_by_hand():
    m = [[1.0, 2.0, 6.0], [3.0, 4.0, 2.0]]
    # row means 3, 3; column means 2, 3, 4; grand mean 3
    expected = [[1 - 3 - 2 + 3, 2 - 3 - 3 + 3, 6 - 3 - 4 + 3], [3 - 3 - 2 + 3, 4 - 3 - 3 + 3, -2]]
    np.testing.assert_allclose(double_centre(m), expected)
    out = double_centre(np.random.default_rng(0).normal(size=(5, 4, 7)))
    np.testing.assert_allclose(out.sum(-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.sum(-2), 0, atol=1e-12)


def test_double_centre_removes_additive_structure():
    rows, cols = np.array([1.0, -2.0, 5.0]), np.array([0.5, 3.0, -1.0, 2.0])
    np.testing.assert_allclose(double_centre(rows[:, None] + cols[None, :]), 0, atol=1e-12)


def test_inter_task_r_against_scipy():
    m = np.random.default_rng(1).normal(size=(3, 8))
    out = inter_task_r(m, ["a", "b", "c"])
    assert list(out) == ["a/b", "a/c", "b/c"]
    for key, (i, j) in zip(out, [(0, 1), (0, 2), (1, 2)], strict=True):
        assert out[key] == pytest.approx(sps.pearsonr(m[i], m[j])[0])


def _hand_items() -> DeltaItems:
    # Task 1 never changes; task 0's two items per domain: (1, 1), (2, 2), (5, 7).
    zero = [0.0, 0.0]
    values = [[[1.0, 1.0], zero], [[2.0, 2.0], zero], [[5.0, 7.0], zero]]
    return DeltaItems(["t0", "t1"], ["d1", "d2", "d3"], values)


def test_interaction_reliability_by_hand():
    """Two tasks: the interaction is ±(δ − mean δ)/2 with δ the task difference, so every split
    correlates (1, 2, 5) with (1, 2, 7): r = 120 / sqrt(78 · 186), then 2r / (1 + r)."""
    r = 120 / math.sqrt(78 * 186)
    out = interaction_reliability(_hand_items(), n_splits=50, seed=3)
    assert out["r_half"] == pytest.approx(r)
    assert out["reliability"] == pytest.approx(2 * r / (1 + r))
    assert out["n_splits"] == 50 and out["n_tasks"] == 2 and out["n_domains"] == 3


def _enumerated_reliability(values: list[np.ndarray]) -> float:
    """Mean Spearman–Brown r over every assignment of 2-item domains to halves (explicit loops)."""
    rels = []
    for picks in itertools.product([0, 1], repeat=len(values)):
        a = np.array(
            [
                [v[t, k] for v, k in zip(values, picks, strict=True)]
                for t in range(values[0].shape[0])
            ]
        )
        b = np.array(
            [[v[t, 1 - k] for v, k in zip(values, picks, strict=True)] for t in range(a.shape[0])]
        )
        ca, cb = (m - m.mean(1, keepdims=True) - m.mean(0) + m.mean() for m in (a, b))
        r = np.corrcoef(ca.ravel(), cb.ravel())[0, 1]
        rels.append(2 * r / (1 + r))
    return float(np.mean(rels))


def test_interaction_reliability_matches_enumeration():
    rng = np.random.default_rng(4)
    signal = rng.normal(size=(3, 4))
    values = [signal[:, [d]] + 0.5 * rng.normal(size=(3, 2)) for d in range(4)]
    items = DeltaItems(["a", "b", "c"], ["w", "x", "y", "z"], values)
    out = interaction_reliability(items, n_splits=4000, seed=0)
    assert out["reliability"] == pytest.approx(_enumerated_reliability(values), abs=0.03)


def test_weights_make_cells_ratio_estimates():
    items = DeltaItems(
        ["a", "b"],
        ["x", "y"],
        [[[1.0, 4.0], [0.0, 0.0]], [[2.0, 2.0], [1, 1]]],
        weights=[[1.0, 3.0], [2.0, 2.0]],
    )
    np.testing.assert_allclose(items.matrix(), [[(1 + 12) / 4, 2.0], [0.0, 1.0]])


def test_from_runs_concatenates_seeds_and_checks_items():
    def run(base, tuned, weight):
        return {"realised": {"x": {"items": {"base": base, "tuned": tuned, "weight": weight}}}}

    runs = {
        "a": [run([1, 1], [3, 2], [1, 2]), run([0], [1], [1])],
        "b": [run([1, 1], [1, 5], [1, 2]), run([0], [0], [1])],
    }
    items = DeltaItems.from_runs(runs, ["x"])
    np.testing.assert_allclose(items.values[0], [[2.0, 0.5, 1.0], [0.0, 2.0, 0.0]])
    np.testing.assert_allclose(items.matrix(), [[(2 + 1 + 1) / 4], [4 / 4]])
    runs["b"][1] = run([0], [0], [5])
    with pytest.raises(ValueError, match="same items of domain 'x'"):
        DeltaItems.from_runs(runs, ["x"])


def test_task_specificity_verdicts():
    rng = np.random.default_rng(5)
    signal = 3 * rng.normal(size=(3, 6))
    values = [signal[:, [d]] + 0.1 * rng.normal(size=(3, 10)) for d in range(6)]
    items = DeltaItems(["a", "b", "c"], [f"d{i}" for i in range(6)], values)
    good = task_specificity(items, 0.8, n_splits=50)
    assert good["specific"] is True and "is task-specific" in good["verdict"]
    assert good["interaction"]["a"]["d0"] == pytest.approx(double_centre(items.matrix())[0, 0])
    # The same change in every task, plus item noise: nothing task-specific.
    shared = [np.repeat(signal[:1, [d]], 3, 0) + rng.normal(size=(3, 10)) for d in range(6)]
    bad = task_specificity(DeltaItems(items.tasks, items.domains, shared), 0.8, n_splits=50)
    assert bad["specific"] is False and "not task-specific enough" in bad["verdict"]
    with pytest.raises(ValueError, match="target_reliability"):
        task_specificity(items, 1.5)


def test_halves_reliability_by_hand():
    a, b = [[1.0, 2.0, 6.0], [3.0, 4.0, 2.0]], [[1.0, 2.0, 7.0], [3.0, 4.0, 2.0]]
    r = np.corrcoef(double_centre(a).ravel(), double_centre(b).ravel())[0, 1]
    assert halves_reliability(a, b) == pytest.approx(2 * r / (1 + r))


def test_bad_items_are_refused_by_name():
    with pytest.raises(ValueError, match="domain 'x'"):
        DeltaItems(["a", "b"], ["x"], [[[1.0, np.nan], [0.0, 0.0]]])
    with pytest.raises(ValueError, match="domain 'x'"):
        DeltaItems(["a", "b"], ["x"], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="domains \\['x', 'y'\\] have 1"):
        interaction_reliability(DeltaItems.from_matrix([[1.0, 2.0], [3.0, 1.0]], "ab", "xy"))


def test_across_tasks_r_and_ceiling_by_hand():
    rng = np.random.default_rng(6)
    truth = rng.normal(size=(4, 8))
    values = [truth[:, [d]] + 0.3 * rng.normal(size=(4, 12)) for d in range(8)]
    items = DeltaItems(list("abcd"), [f"d{i}" for i in range(8)], values)
    forecast = 10 + truth + rng.normal(size=(4, 8)) + np.arange(8)  # domain constants cancel
    out = across_tasks(forecast, items, rel_forecast=0.64, n_boot=300)
    expected = np.corrcoef(double_centre(forecast).ravel(), double_centre(items.matrix()).ravel())
    assert out["r"] == pytest.approx(expected[0, 1])
    assert out["ci"][0] < out["r"] < out["ci"][1] and out["n_cells"] == 32
    rel = interaction_reliability(items)["reliability"]
    assert out["ceiling"] == pytest.approx(math.sqrt(0.64 * rel))
    assert math.isnan(across_tasks(forecast, items, n_boot=10)["ceiling"])
    with pytest.raises(ValueError, match="`forecast` must be"):
        across_tasks(forecast[:3], items)


def test_across_tasks_paired():
    rng = np.random.default_rng(7)
    truth = rng.normal(size=(3, 10))
    values = [truth[:, [d]] + 0.2 * rng.normal(size=(3, 8)) for d in range(10)]
    items = DeltaItems(list("abc"), [f"d{i}" for i in range(10)], values)
    good, bad = truth + 0.1 * rng.normal(size=truth.shape), rng.normal(size=truth.shape)
    out = across_tasks_paired(good, bad, items, n_boot=400)
    solo = across_tasks(good, items, n_boot=10)
    assert out["r_a"] == pytest.approx(solo["r"]) and out["diff"] == out["r_a"] - out["r_b"]
    assert out["ci"][0] > 0 and out["p"] < 0.05
    same = across_tasks_paired(good, good, items, n_boot=50)
    assert same["diff"] == 0 and same["p"] == 1.0


def test_resample_matrices_shapes_and_fixed_cells():
    items = DeltaItems.from_matrix([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "ab", "xyz")
    boot, chosen = resample_matrices(items, 20, np.random.default_rng(0))
    assert boot.shape == (20, 2, 3) and chosen.shape == (20, 3)
    np.testing.assert_allclose(boot, items.matrix()[:, chosen].transpose(1, 0, 2))

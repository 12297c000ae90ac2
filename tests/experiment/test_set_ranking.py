"""Set ranking (Kendall's τ-b per domain) and the near/far positive control."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from sts_lightning.experiment.delta_items import DeltaItems
from sts_lightning.experiment.near_far import NearFarLabels, near_far_control
from sts_lightning.experiment.set_ranking import kendall_tau_b, set_ranking


def test_kendall_tau_b_against_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(50, 5)).astype(float)  # many ties
    y = rng.normal(size=(50, 5))
    y[:10, 1] = y[:10, 0]
    ours = kendall_tau_b(x, y)
    for row in range(50):
        expected = sps.kendalltau(x[row], y[row]).statistic
        if np.isnan(expected):
            assert np.isnan(ours[row])
        else:
            assert ours[row] == pytest.approx(expected)


def test_set_ranking_per_domain_against_scipy():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(4, 6))
    values = [truth[:, [d]] + 0.1 * rng.normal(size=(4, 5)) for d in range(6)]
    items = DeltaItems(list("abcd"), [f"d{i}" for i in range(6)], values)
    forecast = truth + rng.normal(size=truth.shape)
    out = set_ranking(forecast, items, n_boot=200)
    m = items.matrix()
    for d, name in enumerate(items.domains):
        assert out["per_domain"][name] == pytest.approx(
            sps.kendalltau(forecast[:, d], m[:, d]).statistic
        )
    assert out["mean"] == pytest.approx(np.mean(list(out["per_domain"].values())))
    assert out["ci"][0] <= out["mean"] <= out["ci"][1] and out["n_tasks"] == 4
    absolute = set_ranking(forecast, items, absolute=True, n_boot=10)
    assert absolute["per_domain"]["d0"] == pytest.approx(
        sps.kendalltau(forecast[:, 0], np.abs(m[:, 0])).statistic
    )


def test_set_ranking_refuses_fewer_than_three_tasks():
    items = DeltaItems.from_matrix([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]], ["a", "b"], "xyz")
    with pytest.raises(ValueError, match=r"needs >= 3 tasks.*\['a', 'b'\]"):
        set_ranking([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]], items)


def test_perfect_forecast_ranks_perfectly():
    m = np.array([[1.0, 5.0], [2.0, 4.0], [3.0, 6.0]])
    out = set_ranking(2 * m + 1, DeltaItems.from_matrix(m, "abc", "xy"), n_boot=50)
    assert out["per_domain"] == {"x": 1.0, "y": 1.0} and out["ci"] == (1.0, 1.0)


LABELS = {"near": {"a": ["x"], "b": ["y", "z"]}, "far": {"a": ["y", "z"], "b": ["x"]}}


def test_near_far_labels_refuse_unknown_domain_by_name():
    with pytest.raises(ValueError, match=r"`near` of task 'a' names unknown domains \['q'\]"):
        NearFarLabels({"a": ["q"]}, {"a": ["x"]}, ["x", "y"])
    with pytest.raises(ValueError, match=r"`far` of task 'a' names unknown domains \['w'\]"):
        NearFarLabels({"a": ["x"]}, {"a": ["y", "w"]}, ["x", "y"])
    with pytest.raises(ValueError, match="both near and far"):
        NearFarLabels({"a": ["x"]}, {"a": ["x"]}, ["x", "y"])
    with pytest.raises(ValueError, match="same tasks"):
        NearFarLabels({"a": ["x"]}, {"b": ["x"]}, ["x", "y"])


def test_near_far_control_by_hand():
    labels = NearFarLabels(LABELS["near"], LABELS["far"], ["x", "y", "z"])
    scores = np.array([[4.0, 1.0, 2.0], [2.0, 3.0, 0.0]])
    # z over tasks per column: x (1, -1), y (-1, 1), z (1, -1)
    out = near_far_control(scores * [1, 10, 100], ["a", "b"], ["x", "y", "z"], labels)
    assert out["per_task"]["a"] == {"near": 1.0, "far": 0.0, "margin": 1.0, "passes": True}
    assert out["per_task"]["b"]["margin"] == pytest.approx(0.0 - (-1.0))
    assert out["fraction_passing"] == 1.0 and out["mean_margin"] == pytest.approx(1.0)
    flipped = near_far_control(-scores, ["a", "b"], ["x", "y", "z"], labels)
    assert flipped["fraction_passing"] == 0.0
    with pytest.raises(ValueError, match=r"`tasks` \['c'\] have no near/far labels"):
        near_far_control(scores, ["a", "c"], ["x", "y", "z"], labels)

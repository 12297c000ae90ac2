"""The experiment's measurement report (experiment/measurement.py) against direct computations:
the realised items reproduce Δ, the reliabilities are split_half_reliability on the same items,
the paired tests are Williams' t on numpy's correlations."""

from __future__ import annotations

import numpy as np
import pytest

from sts_lightning.experiment.measurement import (
    best_control,
    forecast_reliability,
    measure_task,
    realised_items,
)
from sts_lightning.paired import williams_test
from sts_lightning.reliability import split_half_reliability

DOMAINS = [f"d{i}" for i in range(10)]


def _runs(seed: int = 0, n_items: int = 30, halves_noise: float = 0.1) -> list[dict]:
    """Two runs whose domains differ in true change; items and forecasts are noisy copies."""
    rng = np.random.default_rng(seed)
    truth = np.linspace(0.2, 2.0, len(DOMAINS))
    runs = []
    for _ in range(2):
        realised, scores, halves = {}, {}, {"a": {}, "b": {}}
        for d, t in zip(DOMAINS, truth, strict=True):
            base = rng.normal(0.0, 1.0, n_items)
            weight = rng.integers(1, 4, n_items).astype(float)
            tuned = base + weight * (t + rng.normal(0.0, 1.0, n_items))
            tokens = rng.integers(5, 20, n_items)
            realised[d] = {
                "items": {
                    "base": base.tolist(),
                    "tuned": tuned.tolist(),
                    "weight": weight.tolist(),
                },
                "per_item": {
                    "item_tokens": tokens.tolist(),
                    "item_nll": {"base": (tokens * (2 + t + rng.normal(0, 0.5, n_items))).tolist()},
                },
                "delta": float((tuned - base).sum() / weight.sum()),
            }
            act = t + rng.normal(0.0, 0.3)
            scores[d] = {"act": act, "raw_act": rng.normal(), "repsim_sae": rng.normal()}
            for h in ("a", "b"):
                halves[h][d] = {"act": act + rng.normal(0.0, halves_noise), "raw_act": rng.normal()}
        runs.append({"realised": realised, "scores": scores, "score_halves": halves})
    return runs


def _table(runs) -> dict[str, dict[str, float]]:
    table = {}
    for d in DOMAINS:
        row = {p: np.mean([r["scores"][d][p] for r in runs]) for p in runs[0]["scores"][d]}
        row["base_loss"] = 2.0 + DOMAINS.index(d) / 10
        table[d] = row | {"delta": np.mean([r["realised"][d]["delta"] for r in runs])}
    return table


def test_realised_items_reproduce_each_domains_delta():
    runs = _runs()
    items = realised_items(runs[:1], DOMAINS)
    want = [runs[0]["realised"][d]["delta"] for d in DOMAINS]
    assert items.means() == pytest.approx(want)  # Σ(t − b) / Σ w, as the realised delta


def test_reliabilities_are_split_half_of_the_same_items():
    runs = _runs()
    out = measure_task(runs, _table(runs), n_bootstrap=200)
    values, weights, labels = [], [], []
    for i, d in enumerate(DOMAINS):
        for r in runs:
            items = r["realised"][d]["items"]
            b, t, w = (np.asarray(items[k]) for k in ("base", "tuned", "weight"))
            values += ((t - b) / w).tolist()
            weights += w.tolist()
            labels += [i] * len(w)
    direct = split_half_reliability(values, labels, weights=weights, transform=np.abs)
    assert out["realised"]["abs"]["reliability"] == pytest.approx(direct["reliability"])
    assert 0.8 < out["realised"]["abs"]["reliability"] <= 1.0  # 60 items, spread-out truth
    assert out["items_per_domain"] == dict.fromkeys(DOMAINS, 60)
    assert out["forecast"]["act"] > 0.9 and abs(out["forecast"]["raw_act"]) < 0.9
    want = np.sqrt(out["forecast"]["act"] * out["realised"]["abs"]["reliability"])
    assert out["ceiling"]["act"] == pytest.approx(want)
    assert 0.5 < out["forecast"]["base_loss"] <= 1.0


def test_paired_tests_are_williams_on_numpy_correlations():
    runs = _runs()
    table = _table(runs)
    out = measure_task(runs, table, n_bootstrap=300)
    delta = np.abs(realised_items(runs, DOMAINS).means())
    act, raw = (np.array([table[d][p] for d in DOMAINS]) for p in ("act", "raw_act"))
    r = np.corrcoef([delta, act, raw])
    (vs_raw,) = [c for c in out["tests"]["act"] if c["vs"] == "raw_act"]
    assert vs_raw["r"] == pytest.approx(r[0, 1]) and vs_raw["r_other"] == pytest.approx(r[0, 2])
    t, p = williams_test(r[0, 1], r[0, 2], r[1, 2], len(DOMAINS))
    assert (vs_raw["williams_t"], vs_raw["williams_p"]) == pytest.approx((t, p))
    assert vs_raw["diff"] == pytest.approx(r[0, 1] - r[0, 2])
    assert vs_raw["ci"][0] <= vs_raw["diff"] <= vs_raw["ci"][1]
    # base_loss rises with the truth here: it is the best control, and compared against.
    assert out["best_control"] == "base_loss"
    assert {c["vs"] for c in out["tests"]["act"]} == {"base_loss", "raw_act"}


def test_best_control_and_missing_halves():
    runs = _runs()
    table = _table(runs)
    for d in DOMAINS:
        table[d]["base_loss"] = -table[d]["base_loss"]  # now anti-correlated
    assert best_control(table, DOMAINS, realised_items(runs, DOMAINS)) == "repsim_sae"
    assert forecast_reliability([{k: v for k, v in r.items() if k != "score_halves"}
                                 for r in runs], DOMAINS) == {}  # fmt: skip

"""The experiment's per-domain rank agreement across tasks, against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sts_lightning.experiment.rank_agreement import rank_agreement, rank_agreement_table
from sts_lightning.experiment.report import write_report
from sts_lightning.experiment.summary import summarise_runs

DOMAINS = ["a", "b", "c"]


def test_three_tasks_kendall_and_fraction_by_hand():
    forecast = {"t1": dict(a=1, b=1, c=1), "t2": dict(a=2, b=2, c=2), "t3": dict(a=3, b=3, c=3)}
    realised = {
        "t1": dict(a=10, b=30, c=20),
        "t2": dict(a=20, b=20, c=10),
        "t3": dict(a=30, b=10, c=30),
    }
    out = rank_agreement(forecast, realised, n_bootstrap=200)
    # a: concordant (τ 1); b: reversed (τ -1); c: one discordant pair of three (τ 1/3).
    assert out["per_domain"]["a"] == {"fraction": 1.0, "kendall": pytest.approx(1.0)}
    assert out["per_domain"]["b"] == {"fraction": 0.0, "kendall": pytest.approx(-1.0)}
    assert out["per_domain"]["c"]["fraction"] == pytest.approx(2 / 3)
    assert out["per_domain"]["c"]["kendall"] == pytest.approx(1 / 3)
    assert out["fraction"] == pytest.approx(5 / 9) and out["kendall"] == pytest.approx(1 / 9)
    assert out["fraction_ci"][0] <= out["fraction"] <= out["fraction_ci"][1]
    assert out["n_tasks"] == 3 and out["n_domains"] == 3


def test_two_tasks_fraction_of_domains_ordered_correctly():
    forecast = {"x": dict(a=1, b=5, c=2, d=0), "y": dict(a=2, b=1, c=3, d=1)}
    realised = {"x": dict(a=0.1, b=0.5, c=0.4, d=0.2), "y": dict(a=0.3, b=0.2, c=0.1, d=0.2)}
    out = rank_agreement(forecast, realised, n_bootstrap=500, seed=1)
    # a, b ordered correctly; c wrongly; d a realised tie (½).
    assert [v["fraction"] for v in out["per_domain"].values()] == [1.0, 1.0, 0.0, 0.5]
    assert out["fraction"] == pytest.approx(0.625)
    assert np.isnan(out["kendall"])  # τ needs three tasks
    again = rank_agreement(forecast, realised, n_bootstrap=500, seed=1)
    assert again["fraction_ci"] == out["fraction_ci"]  # seeded
    assert 0.0 <= out["fraction_ci"][0] < 0.625 < out["fraction_ci"][1] <= 1.0


@pytest.mark.parametrize(
    "forecast, realised, message",
    [
        ({"x": {"a": 1}}, {"x": {"a": 1}}, "same >= 2 tasks"),
        ({"x": {"a": 1}, "y": {"a": 2}}, {"x": {"a": 1}, "z": {"a": 2}}, "same >= 2 tasks"),
        ({"x": {"a": 1}, "y": {"b": 2}}, {"x": {"a": 1}, "y": {"a": 2}}, r"`forecast\['y'\]`"),
    ],
)
def test_bad_input_is_named(forecast, realised, message):
    with pytest.raises(ValueError, match=message):
        rank_agreement(forecast, realised)


def _runs():
    """2 tasks × 2 seeds over 5 domains, every field summarise_runs reads."""
    rng = np.random.default_rng(0)
    domains = [f"d{i}" for i in range(5)]
    runs = []
    for task in ("sums", "words"):
        for seed in (0, 1):
            scores = {
                d: {m: float(rng.random()) for m in ("act", "icl", "notebook")} for d in domains
            }
            for d in domains:
                scores[d]["signed"] = float(rng.normal())
            realised = {
                d: {"delta": float(rng.normal()), "se": 0.1, "base_loss": float(rng.random()) + 1}
                | {
                    p: float(rng.random())
                    for p in ("realised_sts", "post_shift_sae", "post_shift_resid")
                }
                for d in domains
            }
            runs.append(
                {
                    "task": task,
                    "seed": seed,
                    "scores": scores,
                    "realised": realised,
                    "overlap": {"icl": 3.0, "contrast": 2.0},
                    "task_accuracy": {"before": 0.1, "after": 0.5},
                    "task_learning": {"learned": True, "reasons": []},
                    "history": [],
                }
            )
    return runs


def test_summary_and_report_carry_the_section(tmp_path):
    results = summarise_runs(_runs(), k=10, d_sae=100, n_bootstrap=100)
    tables = results["tables"]
    for p in ("act", "icl", "signed", "base_loss"):
        got = results["rank_agreement"][p]
        # Oracle: seed means recomputed from the runs, two tasks: does the order agree?
        right = []
        for d in tables["sums"]:
            x = [
                np.mean(
                    [
                        r["scores" if p != "base_loss" else "realised"][d][p]
                        for r in _runs()
                        if r["task"] == t
                    ]
                )
                for t in ("sums", "words")
            ]
            y = [
                abs(np.mean([r["realised"][d]["delta"] for r in _runs() if r["task"] == t]))
                for t in ("sums", "words")
            ]
            right.append(float(np.sign(x[0] - x[1]) == np.sign(y[0] - y[1])))
        assert got["fraction"] == pytest.approx(np.mean(right)), p
    results["config"] = {
        "model": "m",
        "sae": None,
        "predict": {"layer": 1},
        "seeds": [0, 1],
        "finetune": {"method": "sft", "steps": 1, "batch_size": 1, "lr": 0.1, "lora": False},
        "evaluation": {"metric": "choice_margin", "format": "plain", "items_per_domain": 3},
    }
    results["timings"] = {"total": 1.0}
    write_report(results, tmp_path, wandb=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    report = (tmp_path / "report.md").read_text()
    assert "## Did the forecast rank the tasks' damage to each domain?" in report
    key, _, _, _, rows = rank_agreement_table(saved)  # rebuilt from the JSON
    assert key == "rank_agreement" and len(rows) == len(saved["rank_agreement"])
    for row in rows:
        assert "| " + " | ".join(str(c) for c in row) + " |" in report
        assert row[1].startswith(f"{saved['rank_agreement'][row[0]]['fraction']:.3g} [")

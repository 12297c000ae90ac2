"""The cross-task analyses of the experiment's runs, and the report's gate line."""

from __future__ import annotations

import numpy as np
import pytest

from sts_lightning.experiment.near_far import NearFarLabels
from sts_lightning.experiment.specificity import double_centre
from sts_lightning.experiment.summary import summarise_runs

TASKS = ("sums", "words", "logic")
DOMAINS = ("add", "mul", "spell", "sort", "truth")
# Each task moves its own domains: a strong, known interaction.
EFFECT = np.array(
    [
        [-1.0, -0.8, 0.0, -0.1, 0.0],
        [0.0, -0.1, -1.2, -0.6, 0.0],
        [0.0, 0.0, -0.1, -0.2, -0.9],
    ]
)


def _run(t: int, rng, n_items: int = 40, noise: float = 0.2) -> dict:
    realised, scores, halves = {}, {}, {"a": {}, "b": {}}
    for d, domain in enumerate(DOMAINS):
        base = rng.uniform(1, 3, n_items)
        tuned = base + EFFECT[t, d] + rng.normal(0, noise, n_items)
        realised[domain] = {
            "delta": float((tuned - base).mean()),
            "se": 0.1,
            "base_loss": float(base.mean()),
            "items": {"base": base.tolist(), "tuned": tuned.tolist(), "weight": [1.0] * n_items},
        } | {p: 0.0 for p in ("realised_sts", "post_shift_sae", "post_shift_resid")}
        good = abs(EFFECT[t, d])  # a forecast that knows the truth, up to noise
        scores[domain] = {"act": good + rng.normal(0, 0.05), "icl": rng.normal()}
        scores[domain] |= {"notebook": rng.normal(), "signed": -good}
        scores[domain] |= {"first_order": good * 0.5 + rng.normal(0, 0.3)}
        for h in "ab":
            halves[h][domain] = {k: v + rng.normal(0, 0.02) for k, v in scores[domain].items()}
    return {
        "task": TASKS[t],
        "seed": 0,
        "scores": scores,
        "score_halves": halves,
        "realised": realised,
        "overlap": {"icl": 3.0},
        "task_accuracy": {"before": 0.0, "after": 0.0},
        "task_learning": {"learned": None, "reasons": []},
        "history": [],
    }


def _labels() -> NearFarLabels:
    near = {"sums": ["add", "mul"], "words": ["spell"], "logic": ["truth"]}
    far = {"sums": ["spell", "truth"], "words": ["add", "truth"], "logic": ["add", "spell"]}
    return NearFarLabels(near, far, DOMAINS)


@pytest.fixture(scope="module")
def results():
    rng = np.random.default_rng(0)
    runs = [_run(t, rng) for t in range(len(TASKS))]
    return summarise_runs(
        runs, k=10, d_sae=100, n_bootstrap=200, target_reliability=0.8, labels=_labels()
    )


def test_the_gate_holds_on_a_strong_interaction_and_its_matrix_is_double_centred(results):
    gate = results["task_specificity"]
    assert gate["specific"] is True and gate["interaction_reliability"]["reliability"] > 0.9
    m = np.array([[gate["matrix"][t][d] for d in DOMAINS] for t in TASKS])
    np.testing.assert_allclose(m, EFFECT.__abs__(), atol=0.15)  # |Δ|, item noise 0.2/√40
    inter = np.array([[gate["interaction"][t][d] for d in DOMAINS] for t in TASKS])
    np.testing.assert_allclose(inter, double_centre(m), atol=1e-12)
    assert set(gate["inter_task_r"]) == {"sums/words", "sums/logic", "words/logic"}


def test_a_forecast_that_knows_the_truth_wins_across_tasks_and_ranks_the_sets(results):
    by = results["across_tasks"]["by_predictor"]
    assert by["act"]["r"] > 0.9 and by["act"]["ci"][0] > 0.5
    assert abs(by["icl"]["r"]) < by["act"]["r"]  # noise does not
    assert "first_order" in by["act"]["paired"]
    assert by["act"]["paired"]["first_order"]["diff"] > 0
    assert results["set_ranking"]["act"]["mean"] > results["set_ranking"]["icl"]["mean"]
    near_far = results["near_far"]
    assert near_far["realised |Δ|"]["fraction_passing"] == 1.0  # the labels are right
    assert near_far["act"]["fraction_passing"] == 1.0


def test_the_report_states_the_gate_first(results, tmp_path):
    from sts_lightning.experiment.report import write_report

    results = dict(results)
    results["config"] = {
        "model": "m", "sae": None, "predict": {"layer": 1}, "seeds": [0],
        "finetune": {"method": "sft", "steps": 1, "batch_size": 1, "lr": 0.1, "lora": None,
                     "learned_margin": None},
        "evaluation": {"metric": "answer_nll", "items_per_domain": 40, "format": "chat",
                       "target_reliability": 0.8},
        "wandb_project": "p", "wandb_entity": None, "wandb_mode": "offline",
        "wandb_group": None, "wandb_tags": [], "output_dir": str(tmp_path),
    }  # fmt: skip
    results["timings"] = {"total": 1.0}
    report = write_report(results, tmp_path, wandb=False).read_text().splitlines()
    assert report[2].startswith("**The gate holds.** The realised change is task-specific")
    text = "\n".join(report)
    for title in ("Is the change task-specific?", "Across tasks", "Set ranking", "Near/far"):
        assert f"## {title}" in text


def test_two_tasks_have_no_set_ranking_and_one_task_no_cross_task_analysis():
    rng = np.random.default_rng(1)
    two = summarise_runs([_run(0, rng), _run(1, rng)], k=10, d_sae=100, n_bootstrap=50)
    assert two["set_ranking"] is None and two["task_specificity"] is not None
    one = summarise_runs([_run(0, rng)], k=10, d_sae=100, n_bootstrap=50)
    assert one["task_specificity"] is None and one["across_tasks"] is None


def test_a_predictor_equal_for_every_task_is_left_out_not_reported_as_zero():
    rng = np.random.default_rng(3)
    runs = [_run(t, rng) for t in range(len(TASKS))]
    for run in runs:  # the same value for every task, up to rounding
        for d, row in enumerate(run["scores"].values()):
            row["notebook"] = 0.1 * d + (1e-17 if run["task"] == "sums" else 0.0)
    out = summarise_runs(runs, k=10, d_sae=100, n_bootstrap=50, labels=_labels())
    assert "notebook" not in out["across_tasks"]["by_predictor"]
    assert out["near_far"] is not None and "notebook" not in out["near_far"]


def test_near_far_treats_a_column_constant_up_to_rounding_as_constant():
    from sts_lightning.experiment.near_far import near_far_control

    labels = NearFarLabels({"a": ["x"], "b": ["y"]}, {"a": ["y"], "b": ["x"]}, ["x", "y"])
    # Column y differs only by rounding: its z-scores must be 0, not ±1.
    out = near_far_control([[3.0, 2.0], [1.0, 2.0 + 4e-16]], ["a", "b"], ["x", "y"], labels)
    assert out["per_task"]["a"]["margin"] == pytest.approx(1.0)  # z(x) = +1, z(y) = 0
    assert out["per_task"]["b"]["margin"] == pytest.approx(1.0)  # 0 − (−1)


def test_a_seed_on_which_one_task_did_not_learn_is_left_out_of_the_cross_task_analyses():
    """Seeds measure their own items: the cross-task analyses keep the seeds every task learned
    on (here seed 1: ``sums`` did not learn on seed 0), and the per-task ones every learned run."""
    rng = np.random.default_rng(2)
    runs = []
    for seed in (0, 1):
        for t in range(len(TASKS)):
            run = _run(t, rng) | {"seed": seed}
            if seed == 0 and t == 0:
                run["task_learning"] = {"learned": False, "reasons": ["exact match fell"]}
            runs.append(run)
    results = summarise_runs(runs, k=10, d_sae=100, n_bootstrap=50, target_reliability=0.8)
    gate = results["task_specificity"]
    assert gate["paired_seeds"] == [1] and gate["specific"] is True
    only_seed_1 = summarise_runs(
        [r for r in runs if r["seed"] == 1], k=10, d_sae=100, n_bootstrap=50,
        target_reliability=0.8,
    )  # fmt: skip
    want = only_seed_1["task_specificity"]["interaction_reliability"]
    assert gate["interaction_reliability"]["reliability"] == pytest.approx(want["reliability"])
    assert len(results["tables"]["words"]) == len(DOMAINS) and results["n_learned"] == 5

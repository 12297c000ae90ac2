"""Did the fine-tune learn its task? The pure rule and intervals by hand, the probe on a tiny
model (an untrained run is flagged), and the summary/report that set such runs apart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sts_lightning.data.prompts import Example
from sts_lightning.experiment.task_learning import (
    LearnedMargin,
    is_learned,
    learning_rows,
    split_learned,
    task_change,
    wilson_interval,
)
from sts_lightning.experiment.task_probe import TaskLearning, split_task_items

Z = 1.959963984540054  # the 97.5 % normal quantile


def test_wilson_interval_by_hand():
    # 5 of 10: centre (0.5 + z²/20) / (1 + z²/10) = 0.5; half = z/(1 + z²/10) · sqrt(0.025 + z²/400)
    half = Z / (1 + Z**2 / 10) * math.sqrt(0.025 + Z**2 / 400)
    assert wilson_interval(5, 10) == pytest.approx((0.5 - half, 0.5 + half))
    # 0 of 10: low 0, high z²/10 / (1 + z²/10) (the interval does not collapse at 0).
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z**2 / 10 / (1 + Z**2 / 10)))
    assert wilson_interval(0, 64)[0] == 0.0 and wilson_interval(64, 64)[1] == 1.0  # exact ends
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_task_change_by_hand():
    c = task_change([4.0, 6.0], [2.0, 2.0], [2, 2], [0, 1], [1, 1])
    # Per token 10/4 → 4/4; d = (−2, −4), e = d − (−1.5)·c = (1, −1): se = sqrt(2/1 · 2) / 4.
    assert (c["answer_nll_before"], c["answer_nll_after"]) == (2.5, 1.0)
    assert c["answer_nll_delta"] == pytest.approx(-1.5) and c["answer_nll_se"] == pytest.approx(0.5)
    assert c["answer_nll_ci"] == pytest.approx((-1.5 - Z * 0.5, -1.5 + Z * 0.5))
    # Exact match 1/2 → 2/2: item changes (1, 0), mean 0.5, sd sqrt(0.5), se 0.5.
    assert (c["exact_match_before"], c["exact_match_after"]) == (0.5, 1.0)
    assert c["exact_match_change_ci"] == pytest.approx((0.5 - Z * 0.5, 0.5 + Z * 0.5))
    assert c["exact_match_after_ci"] == pytest.approx(wilson_interval(2, 2))
    assert (c["n_items"], c["n_exact_match"]) == (2, 2)


def _change(delta, ci, em_ci=(-0.1, 0.1), em=0.0):
    return {
        "answer_nll_delta": delta,
        "answer_nll_ci": ci,
        "exact_match_change": em,
        "exact_match_change_ci": em_ci,
    }


NAN2 = (float("nan"), float("nan"))
GAIN = LearnedMargin(exact_match_gain=0.1)


@pytest.mark.parametrize(
    ("change", "margin", "learned", "why"),
    [
        (_change(-0.30, (-0.40, -0.20)), LearnedMargin(nll_drop=0.1), True, ""),
        (_change(-0.05, (-0.08, -0.02)), LearnedMargin(nll_drop=0.1), False, "fell 0.05"),
        (_change(-0.30, (-0.70, 0.10)), LearnedMargin(nll_drop=0.1), False, "includes 0"),
        # The issue's run: NLL of the short answers fell, exact match 21 % → 6 %.
        (_change(-0.3, (-0.4, -0.2), (-0.28, -0.02)), LearnedMargin(), False, "fell signific"),
        (_change(-0.3, (-0.4, -0.2), (-0.2, 0.1), -0.05), LearnedMargin(), True, ""),
        (_change(-0.3, (-0.4, -0.2), (0.01, 0.2), 0.1), GAIN, True, ""),
        (_change(-0.3, (-0.4, -0.2), (-0.01, 0.2), 0.1), GAIN, False, "rose"),
        (_change(float("nan"), NAN2, NAN2), LearnedMargin(), False, "no held-out"),
    ],
)  # fmt: skip
def test_learned_rule_by_hand(change, margin, learned, why):
    got, reasons = is_learned(change, margin)
    assert got is learned
    assert (reasons == []) if learned else any(why in r for r in reasons)


def test_learned_rule_on_the_issue_numbers():
    # 24 problems: 5 right before, 1 after (4 lost, none gained); the answers' NLL fell anyway.
    before = np.r_[np.ones(5), np.zeros(19)]
    after = np.r_[np.ones(1), np.zeros(23)]
    c = task_change([6.0] * 24, [5.0] * 23 + [5.5], [2] * 24, before, after)
    learned, reasons = is_learned(c, LearnedMargin(nll_drop=0.1))
    assert c["exact_match_change"] == pytest.approx(-4 / 24)
    assert not learned and reasons == [reasons[0]] and "exact match fell" in reasons[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nll_drop": -0.1}, "learned_margin.nll_drop"),
        ({"exact_match_gain": 5}, "learned_margin.exact_match_gain"),
        ({"confidence": 1.0}, "learned_margin.confidence"),
    ],
)
def test_margin_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LearnedMargin(**kwargs)


def test_split_task_items_file_tasks_hold_out_the_tail():
    pool = [Example(f"q{i}", str(i)) for i in range(20)]
    train, held = split_task_items("mine", False, pool, 64)
    assert train == pool[:15] and held == pool[15:]  # min(64, 20 // 4) = 5 held out
    assert split_task_items("mine", False, pool, 0) == (pool, [])


def test_untrained_run_is_flagged_and_learned_result_is_not(tiny_llama, tiny_tokenizer):
    problems = [Example(f"What is {a} plus {a}?", str(2 * a)) for a in range(6)]
    learning = TaskLearning.measure(
        tiny_llama, tiny_tokenizer, {"sums": (problems, lambda c, e: float(c == e.answer))},
        LearnedMargin(nll_drop=0.05), batch_size=4,
    )  # fmt: skip
    base = learning.base["sums"]
    assert len(base["nll"]) == len(base["correct"]) == 6 and (base["counts"] > 0).all()
    # Zero fine-tuning steps: the same weights, so before == after and the flag fires.
    judged = learning.judge(tiny_llama, tiny_tokenizer, "sums")
    assert judged["answer_nll_delta"] == pytest.approx(0.0, abs=1e-9)
    assert judged["learned"] is False
    assert any("answer NLL fell" in r for r in judged["reasons"])
    # A synthetic learned result: every answer token 0.5 nats cheaper after.
    after = task_change(base["nll"], base["nll"] - 0.5 * base["counts"], base["counts"],
                        base["correct"], base["correct"])  # fmt: skip
    assert after["answer_nll_delta"] == pytest.approx(-0.5)
    assert is_learned(after, learning.margin) == (True, [])


def _run(task, seed, nll_fall, rng):
    """A run record as the experiment writes it; its answers' NLL fell ``nll_fall`` per item."""
    domains = [f"d{i}" for i in range(5)]
    post = ("realised_sts", "post_shift_sae", "post_shift_resid")
    change = task_change([4.0] * 8, [4.0 - nll_fall] * 8, [2] * 8, [0] * 8, [0] * 8)
    learned, reasons = is_learned(change, LearnedMargin())
    return {
        "task": task,
        "seed": seed,
        "scores": {d: {m: float(rng.random()) for m in ("act", "icl", "signed")} for d in domains},
        "realised": {
            d: {"delta": float(rng.normal()), "se": 0.1, "base_loss": float(rng.random())}
            | {p: float(rng.random()) for p in post}
            for d in domains
        },
        "overlap": {"icl": 3.0},
        "task_accuracy": {"before": 0.0, "after": 0.0},
        "task_learning": change | {"learned": learned, "reasons": reasons},
        "history": [],
    }


def _report(results, tmp_path):
    from sts_lightning.experiment.report import write_report

    results["config"] = {
        "model": "m", "sae": None, "predict": {"layer": 1}, "seeds": [0, 1],
        "finetune": {"method": "sft", "steps": 1, "batch_size": 1, "lr": 0.1, "lora": None,
                     "learned_margin": {"nll_drop": 0.1, "exact_match_gain": None,
                                        "confidence": 0.95}},
        "evaluation": {"metric": "choice_margin", "format": "plain", "items_per_domain": 3},
    }  # fmt: skip
    results["timings"] = {"total": 1.0}
    write_report(results, tmp_path, wandb=False)
    return (tmp_path / "report.md").read_text()


def test_not_learned_runs_are_left_out_and_listed(tmp_path):
    from sts_lightning.experiment.summary import summarise_runs

    rng = np.random.default_rng(0)
    runs = [_run("sums", s, 1.0, rng) for s in (0, 1)] + [
        _run("words", s, 0.0, rng) for s in (0, 1)
    ]
    assert [r["task_learning"]["learned"] for r in runs] == [True, True, False, False]
    assert split_learned(runs) == (runs[:2], runs[2:])
    results = summarise_runs(runs, k=10, d_sae=100, n_bootstrap=50)
    assert results["tasks"] == ["sums"] and list(results["tables"]) == ["sums"]
    assert results["n_learned"] == 2 and results["cross_task"] == {}
    assert results["not_learned"] == [{"task": "words", "seed": 0}, {"task": "words", "seed": 1}]
    assert [r["learned"] for r in learning_rows(runs)] == [True, True, False, False]
    report = _report(results, tmp_path)
    assert "**2 of 4 runs learned their source task**" in report
    assert "## Runs whose task was not learned" in report
    assert "| words | 0 | answer NLL fell 0 nats/token (< 0.1)" in report
    assert "## Correlation with |realised Δ|: sums" in report
    assert "## Correlation with |realised Δ|: words" not in report


def test_report_says_at_the_top_when_no_run_learned(tmp_path):
    from sts_lightning.experiment.summary import summarise_runs

    rng = np.random.default_rng(1)
    runs = [_run("sums", 0, 0.0, rng), _run("words", 0, 0.01, rng)]
    results = summarise_runs(runs, k=10, d_sae=100, n_bootstrap=50)
    assert results["tasks"] == [] and results["n_learned"] == 0
    report = _report(results, tmp_path)
    assert report.splitlines()[2].startswith("**No run learned its source task** (0 of 2")
    assert "Correlation with |realised Δ|" not in report
    assert report.count("| **no** |") == 2


@pytest.mark.parametrize(
    "name", ["experiment_mmlu_smollm2.yaml", "experiment_mmlu_smollm2_full.yaml"]
)
def test_smollm2_recipes_fix_the_rule_and_train_three_kinds_of_task(name):
    from pathlib import Path

    from sts_lightning.cli.experiment import load_experiment

    job = load_experiment(Path(__file__).resolve().parents[2] / "recipes" / name)
    assert job.tasks == ["arithmetic", "family", "mmlu_qa"]
    assert job.finetune.learned_margin == LearnedMargin(nll_drop=0.1)
    assert job.evaluation.task_items >= 64
    # Every step sees new examples (the measured settings learned each task).
    ft = job.finetune
    assert ft.steps * ft.batch_size * ft.accumulate == 1280 <= job.task_examples
    assert len(job.seeds) == (2 if "full" in name else 1)


def test_no_rule_analyses_every_run_but_a_run_without_a_record_is_left_out():
    judged = {"task": "t", "seed": 0, "task_learning": {"learned": None, "reasons": []}}
    bare = {"task": "t", "seed": 1}
    assert split_learned([judged, bare]) == ([judged], [bare])
    assert [r["learned"] for r in learning_rows([judged, bare])] == [None, False]
    assert learning_rows([bare])[0]["reasons"] == ["no held-out task problems"]


def test_the_report_gives_each_runs_steps(tmp_path):
    from sts_lightning.experiment.summary import summarise_runs

    rng = np.random.default_rng(2)
    runs = [_run("sums", 0, 1.0, rng), _run("words", 0, 1.0, rng)]
    runs[0] |= {"steps": 20, "step_budget": 40}  # stopped once learned
    runs[1] |= {"steps": 40, "step_budget": 40}
    results = summarise_runs(runs, k=10, d_sae=100, n_bootstrap=50)
    assert [(r["steps"], r["step_budget"]) for r in results["task_learning"]] == [
        (20, 40),
        (40, 40),
    ]
    report = _report(results, tmp_path)
    assert "| sums | 0 | 20 of 40 |" in report and "| words | 0 | 40 |" in report


@pytest.mark.parametrize(
    ("name", "tasks"),
    [
        ("experiment_smollm2.yaml", ["leg_counting", "family", "syllogism", "word_sorting"]),
        ("experiment_smollm2_full.yaml", ["arithmetic", "family", "syllogism", "word_sorting"]),
    ],
)
def test_skills_recipes_carry_the_preregistered_panel_tasks_and_labels(name, tasks):
    from pathlib import Path

    from sts_lightning.cli.experiment import load_experiment
    from sts_lightning.data.skills import NEAR_FAR, SKILL_TASKS, SKILLS

    job = load_experiment(Path(__file__).resolve().parents[2] / "recipes" / name)
    # The recipe is the panel committed in data/skills.py, not a copy that could drift.
    assert job.domains == list(SKILLS) and job.tasks == tasks and set(tasks) <= set(SKILL_TASKS)
    labels = {k: {t: tuple(d) for t, d in v.items()} for k, v in job.near_far.items()}
    assert labels == {k: {t: v[t] for t in tasks} for k, v in NEAR_FAR.items()}
    assert job.evaluation.metric == "answer_nll" and job.evaluation.format == "chat"
    assert job.finetune.learned_margin == LearnedMargin(nll_drop=0.1)
    assert job.first_order is not None and len(job.tasks) >= 4 and len(job.domains) >= 12
    ft = job.finetune
    assert ft.steps * ft.batch_size * ft.accumulate <= job.task_examples  # no example twice
    assert len(job.seeds) == (3 if "full" in name else 1)
    assert (ft.lora is None) == ("full" in name)  # the full run fine-tunes every weight

"""The report's cross-task parts: the task-specificity gate (top line) and its tables.

Rendered from ``results["task_specificity"]``, ``["across_tasks"]``, ``["set_ranking"]`` and
``["near_far"]`` (:mod:`~sts_lightning.experiment.task_specific`); no number is typed by hand.
"""

from __future__ import annotations

from typing import Any

from sts_lightning.experiment.report_learning import fmt, fmt_ci

__all__ = ["specificity_banner", "specificity_tables"]

Table = tuple[str, str, str, list[str], list[list]]


def specificity_banner(results: dict[str, Any]) -> list[str]:
    """The gate's verdict, for the report's first line (nothing without ≥ 2 learned tasks)."""
    gate = results.get("task_specificity")
    if not gate:
        return []
    verdict = gate["verdict"]
    if gate.get("specific") is False:
        verdict = f"**This run cannot test a task-specific forecast.** {verdict}"
    elif gate.get("specific"):
        verdict = f"**The gate holds.** {verdict}"
    return ["", verdict]


def _gate_table(gate: dict[str, Any]) -> Table:
    rel = gate["interaction_reliability"]
    signed = gate.get("interaction_reliability_signed", {})
    rows = [
        ["interaction of |Δ| (the gate)", fmt(rel["reliability"], 2), fmt(rel.get("std"), 2)],
        ["interaction of signed Δ", fmt(signed.get("reliability"), 2), fmt(signed.get("std"), 2)],
    ]
    rows += [[f"r of Δ vectors {pair}", fmt(r, 2), ""] for pair, r in gate["inter_task_r"].items()]
    note = (
        "Split-half reliability (random item halves within each domain, Spearman–Brown, mean "
        "over splits; std over splits) of the task × domain interaction: the realised matrix "
        "with task means and domain means removed. Target "
        f"{gate['target_reliability']:g} (`evaluation.target_reliability`). Below it, what "
        "differs between tasks is not measured above item noise."
    )
    return ("task_specificity", "Is the change task-specific?", note, ["", "value", "std"], rows)


def _across_table(across: dict[str, Any]) -> Table:
    by, best = across["by_predictor"], across.get("best_control")
    head = ["predictor", "r [95% CI]", "ceiling", "rel forecast"]
    head += [f"r − {best} [CI], p" if best else "vs best control", "r − first_order [CI], p"]
    rows = []
    for p, a in by.items():
        paired = a.get("paired", {})
        cells = [
            f"{fmt(paired[c]['diff'], 2)} {fmt_ci(paired[c]['ci'])}, p {fmt(paired[c]['p'], 2)}"
            if c in paired
            else ""
            for c in (best, "first_order")
        ]
        rows.append([p, f"{fmt(a['r'], 2)} {fmt_ci(a['ci'])}", fmt(a["ceiling"], 2)])
        rows[-1] += [fmt(a["rel_forecast"], 2), *cells]
    note = (
        "Which tasks move which domains: Pearson r over all task × domain cells between the "
        "forecast's double-centred matrix and the realised |Δ| one (bootstrap CI over items and "
        "domains; ceiling √(rel_interaction · rel_forecast)). Paired tests use the same "
        f"resamples; the best control ({best or 'none'}) is the one that correlates best here."
    )
    return ("across_tasks", "Across tasks: which tasks move which domains?", note, head, rows)


def _ranking_table(ranking: dict[str, Any]) -> Table:
    head = ["predictor", "mean Kendall τ-b [95% CI]", "domains"]
    rows = [
        [p, f"{fmt(r['mean'], 2)} {fmt_ci(r['ci'])}", r["n_domains"]] for p, r in ranking.items()
    ]
    note = (
        "Which set to pick: per domain, Kendall's τ-b between the forecast's order of the tasks "
        "and the realised order of their |Δ|, mean over domains (bootstrap CI over items and "
        "domains). This is what `predict --train_sets` ranks on."
    )
    return ("set_ranking", "Set ranking: does the forecast order the tasks?", note, head, rows)


def _near_far_table(near_far: dict[str, Any]) -> Table:
    head = ["predictor", "tasks passing", "mean margin (near − far, z)"]
    rows = []
    for p, c in near_far.items():
        passing = round(c["fraction_passing"] * c["n_tasks"])
        rows.append([p, f"{passing} of {c['n_tasks']}", fmt(c["mean_margin"], 2)])
    note = (
        "Positive control, labels fixed in the recipe (`near_far`): per task, the mean "
        "z-scored (over tasks) score of its near domains minus that of its far ones; a task "
        "passes when it is > 0. `realised |Δ|` checks the labels against what happened."
    )
    return ("near_far", "Near/far positive control", note, head, rows)


def specificity_tables(results: dict[str, Any]) -> list[Table]:
    """The gate, across-tasks, set-ranking and near/far tables (those that apply)."""
    out = []
    if results.get("task_specificity") and "interaction_reliability" in results["task_specificity"]:
        out.append(_gate_table(results["task_specificity"]))
    if results.get("across_tasks"):
        out.append(_across_table(results["across_tasks"]))
    if results.get("set_ranking"):
        out.append(_ranking_table(results["set_ranking"]))
    if results.get("near_far"):
        out.append(_near_far_table(results["near_far"]))
    return out

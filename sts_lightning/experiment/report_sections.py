"""The report's sections, each rendered from ``results`` (no number is typed by hand):

- **task learning**: the banner, the per-run table and the runs whose task was not learned
  (``results["task_learning"]``, :func:`~sts_lightning.experiment.task_learning.learning_rows`,
  and the recipe's ``finetune.learned_margin``);
- **measurement**: can the run tell, the reliabilities and ceilings beside every correlation,
  and the paired tests of the STS modes against the controls (``results["measurement"]``,
  :func:`~sts_lightning.experiment.measurement.measure_task`, and
  ``evaluation.target_reliability``);
- **cross-task**: the task-specificity gate (the report's first line) and the across-tasks,
  set-ranking and near/far tables (:mod:`~sts_lightning.experiment.task_specific`).

:mod:`~sts_lightning.experiment.report` assembles them with the figures into ``report.md`` and
the W&B run.
"""

from __future__ import annotations

import math
from typing import Any

from sts_lightning.forecast.modes import PRIMARY

__all__ = ["METRIC_TEXT", "fmt", "fmt_ci", "learning_banner", "learning_table"]
__all__ += ["measurement_banner", "measurement_tables", "not_learned_table", "sign_text"]
__all__ += ["specificity_banner", "specificity_tables"]

Table = tuple[str, str, str, list[str], list[list]]


# ---------------------------------------------------------------- task learning
def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def fmt_ci(pair: Any) -> str:
    low, high = pair if isinstance(pair, (list, tuple)) else (None, None)
    return f"[{fmt(low, 2)}, {fmt(high, 2)}]"


def _rule(results: dict[str, Any]) -> str:
    margin = results.get("config", {}).get("finetune", {}).get("learned_margin") or {}
    if not margin:
        return "the recipe's `finetune.learned_margin`"
    gain = margin.get("exact_match_gain")
    text = (
        f"held-out answer NLL fell by ≥ {margin['nll_drop']:g} nats/token with its "
        f"{margin['confidence']:.0%} interval excluding 0, and exact match did not fall "
        "significantly"
    )
    return text + ("" if gain is None else f" and rose by ≥ {gain:g} (interval above 0)")


def learning_banner(results: dict[str, Any]) -> list[str]:
    """Lines for the top of the report: how many runs learned their task, under which rule."""
    rows = results.get("task_learning")
    if rows is None:
        return []
    n_learned, total = results["n_learned"], len(rows)
    if any(r["learned"] is None for r in rows):
        return ["", "No learned rule was set (`finetune.learned_margin: null`): every run is "
                "analysed, whether or not it learned its task (see *Did fine-tuning learn each "
                "task?*)."]  # fmt: skip
    if n_learned == 0:
        return [
            "",
            f"**No run learned its source task** (0 of {total}; rule: {_rule(results)}). "
            "The realised changes then measure format drift, not transfer: there are no "
            "primary correlations. Every run is listed under *Runs whose task was not learned*.",
        ]
    if n_learned < total:
        return [
            "",
            f"**{n_learned} of {total} runs learned their source task** (rule: "
            f"{_rule(results)}). Every analysis below uses those runs only; the others are "
            "listed under *Runs whose task was not learned*.",
        ]
    return ["", f"All {total} runs learned their source task (rule: {_rule(results)})."]


def _steps(row: dict[str, Any]) -> str:
    """``"20 of 40"`` (stopped once learned), ``"40"``, or ``"n/a"`` in older results."""
    steps, budget = row.get("steps"), row.get("step_budget")
    if steps is None:
        return "n/a"
    return f"{steps} of {budget}" if budget is not None and steps != budget else str(steps)


def learning_table(results: dict[str, Any]) -> list[Table]:
    """The per-run task-learning table (none for results without it)."""
    rows = results.get("task_learning")
    if rows is None:
        return []
    head = ["task", "seed", "steps", "answer NLL before → after", "Δ answer NLL [CI]"]
    head += ["exact match before [CI]", "after [CI]", "change [CI]", "items", "learned"]
    table = [
        [
            r["task"],
            r["seed"],
            _steps(r),
            f"{fmt(r['answer_nll_before'])} → {fmt(r['answer_nll_after'])}",
            f"{fmt(r['answer_nll_delta'])} {fmt_ci(r['answer_nll_ci'])}",
            f"{fmt(r['exact_match_before'])} {fmt_ci(r['exact_match_before_ci'])}",
            f"{fmt(r['exact_match_after'])} {fmt_ci(r['exact_match_after_ci'])}",
            f"{fmt(r['exact_match_change'])} {fmt_ci(r['exact_match_change_ci'])}",
            r["n_items"],
            {True: "yes", None: "not judged"}.get(r["learned"], "**no**"),
        ]
        for r in rows
    ]
    note = (
        "Held-out problems of each source task (never trained on), paired by item: answer NLL "
        "(nats per answer token, teacher-forced; item-clustered interval of the change) and "
        "greedy exact match (Wilson intervals; paired interval of the change). Steps: "
        "optimizer steps run, of the task's budget when it stopped early on its stop probe. "
        f"Learned: {_rule(results)}."
    )
    return [("task_learning", "Did fine-tuning learn each task?", note, head, table)]


def not_learned_table(results: dict[str, Any]) -> list[Table]:
    """The runs whose task was not learned, with why (none when every run learned)."""
    rows = results.get("task_learning") or []
    missed = [
        [r["task"], r["seed"], "; ".join(r["reasons"])] for r in rows if r["learned"] is False
    ]
    if not missed:
        return []
    note = (
        "Left out of every correlation, table and comparison above: a task that was not "
        "learned says nothing about transfer. Their per-domain changes are in `results.json` "
        "(`runs`)."
    )
    return [
        ("not_learned", "Runs whose task was not learned", note, ["task", "seed", "why"], missed)
    ]


# ---------------------------------------------------------------- measurement
METRIC_TEXT = {
    "choice_margin": "the drop of the correct option's log-odds against the other options, "
    "mean over items (nats)",
    "answer_nll": "the correct answer's NLL per answer token after − before fine-tuning",
    "item_nll": "the whole item's NLL per content token after − before fine-tuning",
}
"""What the realised Δ of each ``evaluation.metric`` is, for the report's text."""


def sign_text(accuracy: Any) -> str:
    """Sign accuracy, or why it is undefined (a predictor whose sign never changes)."""
    if accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy)):
        return "undefined (one sign)"
    return fmt(accuracy)


def _target(results: dict[str, Any]) -> float:
    return results["config"]["evaluation"].get("target_reliability", 0.8)


def _primary_line(task: str, m: dict[str, Any], corr: dict[str, Any]) -> str:
    """One task's primary hypothesis: r of STS_act and STS_ICL with |Δ|, CI and ceiling."""
    parts = []
    for mode in PRIMARY:
        pooled = corr.get(mode, {}).get("pooled")
        if pooled is None:
            continue
        ci = fmt_ci((pooled["pearson_ci_low"], pooled["pearson_ci_high"]))
        ceiling = fmt(m["ceiling"].get(mode), 2)
        parts.append(f"STS_{mode} r = {fmt(pooled['pearson'], 2)} {ci} (ceiling {ceiling})")
    return f"{task}: " + "; ".join(parts) if parts else f"{task}: no primary predictor"


def measurement_banner(results: dict[str, Any]) -> list[str]:
    """Lines for the top of the report: can the data tell, and the primary hypothesis."""
    measurement = {t: m for t, m in (results.get("measurement") or {}).items() if m}
    if not measurement:
        return []
    target, low = _target(results), []
    for task, m in measurement.items():
        rel = m["realised"]["abs"]["reliability"]
        if not (isinstance(rel, float) and rel >= target):
            low.append(f"{task} {fmt(rel, 2)}")
    lines = [""]
    if low:
        lines.append(
            f"**This run cannot tell whether STS predicts**: the realised |Δ| across domains "
            f"is below its pre-registered reliability target {target:g} ({', '.join(low)}; "
            "split-half, Spearman–Brown). Correlations below are bounded by their noise "
            "ceilings; more held-out items per domain raise the reliability."
        )
    else:
        lines.append(
            f"The realised |Δ| reaches its reliability target {target:g} for every task: "
            "the run can tell, up to the ceilings listed beside each correlation."
        )
    n = results.get("n_predictors", "?")
    lines += [
        "",
        "Pre-registered primary hypothesis: STS_act and STS_ICL correlate positively with "
        f"|Δ| of `{results['config']['evaluation']['metric']}` across domains "
        f"({n} predictors are reported; the others are secondary). Seed-mean Pearson "
        "[95 % CI]:",
        "",
        *[f"- {_primary_line(t, m, results['correlations'][t])}" for t, m in measurement.items()],
    ]
    return lines


def _reliability_table(task: str, m: dict[str, Any], corr: dict[str, Any]) -> Table:
    realised = m["realised"]
    rows = [
        ["realised |Δ|", fmt(realised["abs"]["reliability"]), fmt(realised["abs"]["std"], 2),
         "—", "—"],
        ["realised Δ (signed)", fmt(realised["signed"]["reliability"]),
         fmt(realised["signed"]["std"], 2), "—", "—"],
    ]  # fmt: skip
    for p, rel in m["forecast"].items():
        r = corr.get(p, {}).get("pooled", {}).get("pearson")
        rows.append([p, fmt(rel), "—", fmt(m["ceiling"].get(p)), fmt(r)])
    note = (
        "Split-half reliability (Spearman–Brown): realised over random item halves "
        "(200 splits; spread = std over splits); forecasts over the two disjoint halves of "
        "each domain's items their domain statistics were computed on (one split); base_loss "
        "over item halves. Ceiling = √(rel_forecast · rel_|Δ|): the highest Pearson r the "
        "data allow. Items per domain: "
        + ", ".join(f"{d} {n}" for d, n in m["items_per_domain"].items())
        + "."
    )
    head = ["vector", "reliability", "spread", "ceiling", "seed-mean Pearson r with |Δ|"]
    return (f"reliability/{task}", f"Reliability and noise ceilings: {task}", note, head, rows)


def _tests_table(task: str, m: dict[str, Any]) -> Table:
    rows = []
    for mode, comparisons in m["tests"].items():
        for c in comparisons:
            rows.append(
                [
                    mode + (" (primary)" if mode in PRIMARY else ""),
                    c["vs"],
                    fmt(c["r"], 2),
                    fmt(c["r_other"], 2),
                    f"{fmt(c['diff'], 2)} {fmt_ci(c['ci'])}",
                    fmt(c["bootstrap_p"], 2),
                    f"{fmt(c['williams_t'], 3)} (p {fmt(c['williams_p'], 2)})",
                ]
            )
    note = (
        f"Each STS mode against the best control on these data ({m['best_control'] or 'none'}; "
        "picked for its correlation with |Δ|, which favours it) and against the same pipeline "
        "on raw residual neurons. Pearson r with |Δ| over "
        f"{m['n_domains']} domains; difference with a 95 % bootstrap CI over domains and items "
        "(two-stage, which counts item noise twice: conservative) and its bootstrap p; "
        "Williams' t for dependent correlations (Steiger 1980, df = n − 3). Not corrected for "
        "the number of comparisons: read the primary rows first."
    )
    head = ["STS mode", "vs", "r", "r other", "difference [95% CI]", "p (bootstrap)"]
    head.append("Williams t (p)")
    return (f"paired_tests/{task}", f"Paired tests: {task}", note, head, rows)


def measurement_tables(results: dict[str, Any]) -> list[Table]:
    """The reliability and paired-test tables of every task (none without a measurement)."""
    tables = []
    for task, m in (results.get("measurement") or {}).items():
        if not m:
            continue
        tables.append(_reliability_table(task, m, results["correlations"][task]))
        tables.append(_tests_table(task, m))
    return tables


# ---------------------------------------------------------------- cross-task
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
    seeds, all_seeds = gate.get("paired_seeds"), results.get("config", {}).get("seeds")
    if seeds is not None and all_seeds is not None and len(seeds) < len(all_seeds):
        verdict += (
            f" The cross-task analyses pair the tasks on seeds {seeds}, on which every task"
            " learned (each seed has its own held-out items)."
        )
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

"""The report's measurement parts: can the run tell, the reliabilities and ceilings beside every
correlation, and the paired tests of the STS modes against the controls.

Rendered from ``results["measurement"]`` (:func:`~sts_lightning.experiment.measurement.
measure_task`, per task) and the recipe's ``evaluation.target_reliability``; no number is typed
by hand.
"""

from __future__ import annotations

import math
from typing import Any

from sts_lightning.experiment.report_learning import fmt, fmt_ci
from sts_lightning.forecast.modes import PRIMARY

__all__ = ["METRIC_TEXT", "measurement_banner", "measurement_tables", "sign_text"]

Table = tuple[str, str, str, list[str], list[list]]

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

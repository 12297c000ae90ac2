"""From per-run measurements to the report's numbers: tables, correlations, controls, seeds.

Every number in the report is computed here from the runs, never typed: the per-domain table
(seed means), correlations of every predictor with |realised Δ| (pooled over seeds and per
seed), partial correlations controlling for the base-model loss, the cross-task comparison,
sign accuracy and overlap@k. These primary analyses use only the runs that learned their
source task (:mod:`~sts_lightning.experiment.task_learning`); the others are listed apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from sts_lightning.experiment.analysis import (
    correlations,
    cross_task,
    partial_correlation,
    sign_accuracy,
    summarise,
)
from sts_lightning.experiment.measurement import measure_task
from sts_lightning.experiment.rank_agreement import rank_agreement
from sts_lightning.experiment.task_learning import learning_rows, split_learned
from sts_lightning.experiment.task_specific import summarise_task_specific
from sts_lightning.forecast.modes import MODES, contrast_modes

__all__ = ["GROUPS", "PREDICTORS", "paired_runs", "summarise_runs"]

GROUPS: dict[str, tuple[str, ...]] = {
    "STS (paper's definitions)": tuple(MODES),
    "STS, task-specific ICL contrast": contrast_modes(),
    "baselines (forecast time)": ("raw_act", "raw_icl", "repsim_sae", "repsim_resid"),
    "control": ("base_loss",),
    "first-order gradient control (forecast time)": ("first_order", "first_order_signed"),
    "references (need the fine-tuned model)": (
        "realised_sts",
        "post_shift_sae",
        "post_shift_resid",
    ),
}
"""Predictors by kind, in report order."""

PREDICTORS: tuple[str, ...] = tuple(p for group in GROUPS.values() for p in group)

_POST = ("realised_sts", "post_shift_sae", "post_shift_resid")


def _predictors(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{domain: {predictor: value}}`` of one run (forecast scores + controls + references)."""
    out = {}
    for domain, scores in run["scores"].items():
        realised = run["realised"][domain]
        row = {**scores, "base_loss": realised["base_loss"]}
        row |= {p: realised[p] for p in _POST}
        out[domain] = row
    return out


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _partial(x, y, z, method: str) -> tuple[float, float]:
    """Partial correlation, NaN (not an error) with < 4 finite domains."""
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    if keep.sum() < 4:
        return float("nan"), float("nan")
    x, y, z = (np.asarray(v, dtype=float)[keep] for v in (x, y, z))
    return partial_correlation(x, y, z, method=method)


def _task_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Seed-mean of every predictor and of the realised delta, per domain."""
    per_run = [_predictors(r) for r in runs]
    table = {}
    for domain in runs[0]["realised"]:
        predictors = [p for p in PREDICTORS if p in per_run[0][domain]]
        row = {p: _mean([pr[domain][p] for pr in per_run]) for p in predictors}
        deltas = [r["realised"][domain]["delta"] for r in runs]
        row["delta"] = _mean(deltas)
        row["delta_std"] = float(np.std(deltas, ddof=1)) if len(deltas) > 1 else float("nan")
        row["se"] = _mean([r["realised"][domain]["se"] for r in runs])
        table[domain] = row
    return table


def _task_correlations(
    rs: list[dict[str, Any]], table: dict[str, dict[str, float]], n_bootstrap: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Correlations with the realised delta (pooled and per seed) and partial correlations
    controlling for the base loss, of every predictor of one task."""
    domains = list(table)
    delta = [table[d]["delta"] for d in domains]
    base = [table[d]["base_loss"] for d in domains]
    corr, partial = {}, {}
    per_run = [_predictors(r) for r in rs]  # {domain: {predictor: value}} of each seed
    for p in (p for p in PREDICTORS if p in table[domains[0]]):
        pooled = correlations([table[d][p] for d in domains], delta, n_bootstrap=n_bootstrap)
        seeds = [
            correlations(
                [values[d][p] for d in domains],
                [r["realised"][d]["delta"] for d in domains],
                n_bootstrap=1,
            )
            for r, values in zip(rs, per_run, strict=True)
        ]
        corr[p] = {
            "pooled": pooled,
            "pearson_seeds": summarise([s["pearson"] for s in seeds]),
            "spearman_seeds": summarise([s["spearman"] for s in seeds]),
        }
        if p != "base_loss":
            x = [table[d][p] for d in domains]
            partial[p] = {}
            for method in ("pearson", "spearman"):
                r, pv = _partial(x, np.abs(delta), base, method)
                partial[p][method] = {"r": r, "p": pv}
    return corr, partial


def _sign(rs: list[dict[str, Any]], table: dict[str, dict[str, float]]) -> dict[str, Any]:
    """How often the signed forecast has the realised delta's sign (pooled, and per seed)."""
    domains = list(table)
    delta = [table[d]["delta"] for d in domains]
    return {
        "pooled": sign_accuracy([table[d]["signed"] for d in domains], delta),
        "seeds": summarise(
            [
                sign_accuracy(
                    [r["scores"][d]["signed"] for d in domains],
                    [r["realised"][d]["delta"] for d in domains],
                )["accuracy"]
                for r in rs
            ]
        ),
    }


def _cross_task(tasks: list[str], tables: dict[str, dict[str, dict[str, float]]]) -> dict:
    """:func:`cross_task` of every pair of tasks, for every predictor."""
    pairs = {}
    for a, b in itertools.combinations(tasks, 2):
        ta, tb = tables[a], tables[b]
        pairs[f"{a} vs {b}"] = {
            p: cross_task(
                {d: v[p] for d, v in ta.items()},
                {d: v[p] for d, v in tb.items()},
                {d: v["delta"] for d, v in ta.items()},
                {d: v["delta"] for d, v in tb.items()},
            )
            for p in PREDICTORS
            if p in ta[next(iter(ta))]
        }
    return pairs


def _rank_agreement(tasks: list[str], tables: dict, n_bootstrap: int) -> dict[str, Any]:
    """:func:`rank_agreement` of every predictor all tasks have (empty with one task)."""
    if len(tasks) < 2:
        return {}
    realised = {t: {d: abs(v["delta"]) for d, v in tables[t].items()} for t in tasks}
    shared = [p for p in PREDICTORS if all(p in next(iter(tables[t].values())) for t in tasks)]
    return {
        p: rank_agreement(
            {t: {d: v[p] for d, v in tables[t].items()} for t in tasks},
            realised,
            n_bootstrap=n_bootstrap,
        )
        for p in shared
    }


def _n_predictors(tables: dict[str, dict[str, dict[str, float]]]) -> int:
    """How many predictors the report compares (those the runs have)."""
    rows = [row for table in tables.values() for row in table.values()]
    return len([p for p in PREDICTORS if rows and p in rows[0]])


def paired_runs(by_task: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], list[int]]:
    """The learned runs the cross-task analyses compare: each task's runs on the seeds on which
    every task has a learned run, and those seeds.

    Tasks are compared item by item, and each seed measures its own held-out items
    (``evaluation.vary_items``): a seed on which one task did not learn leaves the other tasks'
    runs of that seed without a partner, so it is left out of the cross-task analyses (the
    per-task analyses keep every learned run). Every task keeps its place while one seed is
    shared; with none, there is no cross-task analysis.

    Example:
        >>> runs = {"a": [{"seed": 0}, {"seed": 1}], "b": [{"seed": 1}, {"seed": 2}]}
        >>> paired_runs(runs)
        ({'a': [{'seed': 1}], 'b': [{'seed': 1}]}, [1])
    """
    if not by_task:
        return {}, []
    seeds = set.intersection(*({r["seed"] for r in rs} for rs in by_task.values()))
    if not seeds:
        return {}, []
    return {t: [r for r in rs if r["seed"] in seeds] for t, rs in by_task.items()}, sorted(seeds)


def summarise_runs(
    runs: list[dict[str, Any]],
    *,
    k: int,
    d_sae: int,
    n_bootstrap: int = 2000,
    target_reliability: float = 0.8,
    labels: Any = None,
) -> dict[str, Any]:
    """The report's numbers from the runs (each a dict written by the experiment runner).

    Returns:
        ``{"runs", "tasks", "tables", "correlations", "partial", "cross_task", "sign",
        "overlap", "task_accuracy", "predictors", "rank_agreement", "task_learning",
        "n_learned", "not_learned", "measurement", "n_predictors", "task_specificity",
        "across_tasks", "set_ranking", "near_far"}`` (the last four from
        :func:`~sts_lightning.experiment.task_specific.summarise_task_specific`, ``None`` where
        they do not apply: fewer than 2 learned tasks, 3 for ``set_ranking``, no labels for
        ``near_far``); see ``docs/results.md``
        for how to read them. ``tasks`` and every analysis cover the learned runs only (the
        cross-task ones those on the seeds every task learned on: :func:`paired_runs`);
        ``task_learning`` has a row per run.
    """
    learned, not_learned = split_learned(runs)
    tasks = list(dict.fromkeys(r["task"] for r in learned))
    by_task = {t: [r for r in learned if r["task"] == t] for t in tasks}
    tables = {t: _task_table(rs) for t, rs in by_task.items()}
    corr, partial, sign, overlap, accuracy = {}, {}, {}, {}, {}
    for task, rs in by_task.items():
        corr[task], partial[task] = _task_correlations(rs, tables[task], n_bootstrap)
        sign[task] = _sign(rs, tables[task])
        overlap[task] = {
            kind: summarise([r["overlap"][kind] for r in rs]) for kind in rs[0]["overlap"]
        }
        accuracy[task] = {
            "before": rs[0]["task_accuracy"]["before"],
            "after": summarise([r["task_accuracy"]["after"] for r in rs]),
        }
    forecast_time = [p for p in PREDICTORS if p not in _POST]
    paired, seeds = paired_runs(by_task)
    specific = summarise_task_specific(
        paired, {t: _task_table(rs) for t, rs in paired.items()}, forecast_time,
        target_reliability=target_reliability, labels=labels, n_bootstrap=n_bootstrap,
    )  # fmt: skip
    if specific.get("task_specificity") is not None:
        specific["task_specificity"]["paired_seeds"] = seeds
    return {
        "tasks": tasks,
        "task_specificity": specific.get("task_specificity"),
        "across_tasks": specific.get("across_tasks"),
        "set_ranking": specific.get("set_ranking"),
        "near_far": specific.get("near_far"),
        "predictors": {g: [p for p in ps] for g, ps in GROUPS.items()},
        "k": k,
        "d_sae": d_sae,
        "overlap_random": k * k / d_sae,
        "tables": tables,
        "correlations": corr,
        "partial": partial,
        "cross_task": _cross_task(tasks, tables),
        "rank_agreement": _rank_agreement(tasks, tables, n_bootstrap),
        "sign": sign,
        "overlap": overlap,
        "task_accuracy": accuracy,
        "measurement": {
            t: measure_task(rs, tables[t], n_bootstrap=n_bootstrap) for t, rs in by_task.items()
        },
        "n_predictors": _n_predictors(tables),
        "task_learning": learning_rows(runs),
        "n_learned": len(learned),
        "not_learned": [{"task": r["task"], "seed": r["seed"]} for r in not_learned],
        "runs": runs,
    }

"""The questions users ask of a forecast, tested across tasks: which tasks move which domains,
and which candidate set to pick.

From the learned runs of every task (the same held-out items of every domain for every task):

- ``task_specificity``, the gate: is the realised change task-specific at all? The task ×
  domain interaction of |Δ| (task means and domain means removed) and its split-half
  reliability against ``evaluation.target_reliability``; the tasks' Δ vectors' correlations
  (:mod:`~sts_lightning.experiment.specificity`);
- ``across_tasks``: per forecast, r between its double-centred matrix and the realised one
  over all task × domain cells, with a bootstrap CI over items and domains, its noise ceiling,
  and paired tests (the same resamples) against the best control and against ``first_order``
  (:mod:`~sts_lightning.experiment.across_tasks`);
- ``set_ranking``: per forecast, Kendall's τ-b between its order of the tasks and the realised
  order in each domain, mean over domains with a CI: does ``predict --train_sets`` pick the
  right set? (:mod:`~sts_lightning.experiment.set_ranking`; ≥ 3 tasks);
- ``near_far``: per forecast (and for the realised change itself), the pre-registered
  positive control (:mod:`~sts_lightning.experiment.near_far`).

A predictor that is the same for every task (the base model's loss on a domain) cannot tell
tasks apart: it is left out of these analyses rather than reported as r = 0.

Every analysis is on |Δ|, the magnitude the forecasts predict (the paper's target); the
interaction of signed Δ is reported beside the gate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sts_lightning.experiment.across_tasks import across_tasks, across_tasks_paired
from sts_lightning.experiment.delta_items import DeltaItems
from sts_lightning.experiment.near_far import NearFarLabels, near_far_control
from sts_lightning.experiment.set_ranking import MIN_TASKS, set_ranking
from sts_lightning.experiment.specificity import (
    double_centre,
    halves_reliability,
    interaction_reliability,
    task_specificity,
)

__all__ = ["CONTROLS_ACROSS", "FIRST_ORDER", "summarise_task_specific"]

CONTROLS_ACROSS = ("repsim_sae", "repsim_resid", "base_loss", "raw_act", "raw_icl")
"""Forecast-time alternatives an STS mode must beat across tasks (the best one on these data
is chosen, which favours the control)."""
FIRST_ORDER = "first_order"
"""The first-order gradient control's predictor name."""


def _matrix(tables: Mapping, tasks: Sequence[str], domains: Sequence[str], p: str) -> np.ndarray:
    return np.array([[tables[t][d].get(p, math.nan) for d in domains] for t in tasks], float)


def _halves(by_task: Mapping, tasks, domains, p: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Seed-mean forecast matrices on the two item halves of the domains, or ``None``."""
    out = []
    for half in ("a", "b"):
        rows = []
        for t in tasks:
            runs = by_task[t]
            if not all("score_halves" in r for r in runs):
                return None
            rows.append(
                [
                    np.mean([r["score_halves"][half][d].get(p, math.nan) for r in runs])
                    for d in domains
                ]
            )
        out.append(np.array(rows, float))
    return out[0], out[1]


def _forecasts(by_task, tables, tasks, domains, predictors) -> dict[str, dict[str, Any]]:
    """``{predictor: {"matrix", "rel"}}`` for every forecast-time predictor the runs have."""
    out = {}
    for p in predictors:
        m = _matrix(tables, tasks, domains, p)
        if not np.isfinite(m).all():
            continue  # a mode without ICL, or a predictor these runs lack
        if np.abs(double_centre(m)).max() <= 1e-9 * np.abs(m).max():
            continue  # the same for every task (e.g. base loss): it cannot tell tasks apart
        halves = _halves(by_task, tasks, domains, p)
        rel = math.nan
        if halves is not None and all(np.isfinite(h).all() for h in halves):
            rel = halves_reliability(*halves)
        out[p] = {"matrix": m, "rel": rel}
    return out


def _across(forecasts, items, rel_interaction, n_boot: int) -> dict[str, Any]:
    """Per forecast its across-tasks r; every STS mode paired with the best control and with
    ``first_order``."""
    kw = dict(absolute=True, n_boot=n_boot, seed=0)
    out = {
        p: across_tasks(
            f["matrix"], items, rel_forecast=f["rel"], rel_interaction=rel_interaction, **kw
        )
        for p, f in forecasts.items()
    }
    controls = [c for c in CONTROLS_ACROSS if c in out and math.isfinite(out[c]["r"])]
    best = max(controls, key=lambda c: out[c]["r"], default=None)
    others = [c for c in (best, FIRST_ORDER) if c is not None and c in forecasts]
    for p, f in forecasts.items():
        if p in CONTROLS_ACROSS or p.startswith(FIRST_ORDER):
            continue
        out[p]["paired"] = {
            c: across_tasks_paired(f["matrix"], forecasts[c]["matrix"], items, **kw) for c in others
        }
    return {"by_predictor": out, "best_control": best}


def summarise_task_specific(
    by_task: Mapping[str, Sequence[dict]],
    tables: Mapping[str, Mapping[str, Mapping[str, float]]],
    predictors: Sequence[str],
    *,
    target_reliability: float,
    labels: NearFarLabels | None = None,
    n_bootstrap: int = 2000,
) -> dict[str, Any]:
    """The cross-task analyses of the learned runs (empty with fewer than 2 tasks).

    Args:
        by_task: ``{task: [run, ...]}`` of learned runs, every task with the same seeds.
        tables: ``{task: {domain: {predictor: seed mean}}}``.
        predictors: Forecast-time predictors to test, in report order.
        target_reliability: The interaction reliability the gate needs.
        labels: The pre-registered near/far labels, or ``None``.
        n_bootstrap: Bootstrap resamples of every CI.

    Returns:
        ``{"task_specificity", "across_tasks", "set_ranking", "near_far"}`` (the last two
        ``None`` where they do not apply); ``{}`` with fewer than 2 tasks.
    """
    tasks = list(by_task)
    if len(tasks) < 2:
        return {}
    domains = list(next(iter(tables.values())))
    runs = [r for rs in by_task.values() for r in rs]
    if not all("items" in r["realised"][d] for r in runs for d in domains):
        return {}  # runs recorded without per-item values: nothing to split or resample
    try:
        items = DeltaItems.from_runs(by_task, domains)
    except ValueError as err:  # e.g. a task with a seed that did not learn: unequal items
        return {"task_specificity": {"specific": None, "verdict": f"Not measured: {err}."}}
    gate = task_specificity(items, target_reliability, absolute=True)
    gate["interaction_reliability_signed"] = interaction_reliability(items)
    rel = gate["interaction_reliability"]["reliability"]
    forecasts = _forecasts(by_task, tables, tasks, domains, predictors)
    ranking = None
    if len(tasks) >= MIN_TASKS:
        kw = dict(absolute=True, n_boot=n_bootstrap, seed=0)
        ranking = {p: set_ranking(f["matrix"], items, **kw) for p, f in forecasts.items()}
    near_far = None
    if labels is not None and all(t in labels.near for t in tasks):
        realised = np.abs(items.matrix())
        near_far = {"realised |Δ|": near_far_control(realised, tasks, domains, labels)}
        near_far |= {
            p: near_far_control(f["matrix"], tasks, domains, labels) for p, f in forecasts.items()
        }
    return {
        "task_specificity": gate,
        "across_tasks": _across(forecasts, items, rel, n_bootstrap),
        "set_ranking": ranking,
        "near_far": near_far,
    }

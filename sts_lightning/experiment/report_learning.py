"""The report's task-learning parts: the banner, the per-run table and the not-learned runs.

Rendered from ``results["task_learning"]`` (:func:`~sts_lightning.experiment.task_learning.
learning_rows`) and the recipe's ``finetune.learned_margin``; no number is typed by hand.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fmt", "fmt_ci", "learning_banner", "learning_table", "not_learned_table"]

Table = tuple[str, str, str, list[str], list[list]]


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

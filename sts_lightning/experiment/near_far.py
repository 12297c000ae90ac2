"""The near/far positive control: does a forecast put a task's near domains above its far ones?

Each source task names, before any run, its *near* domains (the same skill through another
generator or format) and its *far* ones. A forecast of what the task changes should score the
near domains above the far ones; one that does not fails a check whose answer is known in advance.
Scores are first normalised within each domain over the tasks (z-scores across the task column),
so a domain every forecast scores high, or one with a larger scale, cannot pass or fail it alone:
the question is whether *this* task's near domains stand out more than for the other tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["NearFarLabels", "near_far_control"]


@dataclass(frozen=True)
class NearFarLabels:
    """Pre-registered near and far domains of every source task, checked against the domains."""

    near: Mapping[str, Sequence[str]]
    """Task → its near domains (the same skill through another generator or format); ≥ 1."""
    far: Mapping[str, Sequence[str]]
    """Task → its far domains (unrelated skills); ≥ 1, none of them near."""
    domains: Sequence[str]
    """Every domain of the panel; a label naming another domain is refused."""

    def __post_init__(self) -> None:
        near = {t: tuple(ds) for t, ds in self.near.items()}
        far = {t: tuple(ds) for t, ds in self.far.items()}
        domains = tuple(self.domains)
        if near.keys() != far.keys():
            raise ValueError(
                f"`near` and `far` must label the same tasks; differ: "
                f"{sorted(set(near) ^ set(far))}"
            )
        for field, labels in (("near", near), ("far", far)):
            for task, ds in labels.items():
                if not ds:
                    raise ValueError(f"`{field}` of task {task!r} names no domain")
                if unknown := [d for d in ds if d not in domains]:
                    raise ValueError(
                        f"`{field}` of task {task!r} names unknown domains "
                        f"{unknown}; the panel's domains are {list(domains)}"
                    )
                if len(set(ds)) != len(ds):
                    raise ValueError(f"`{field}` of task {task!r} repeats a domain: {list(ds)}")
        for task in near:
            if both := sorted(set(near[task]) & set(far[task])):
                raise ValueError(f"task {task!r} labels {both} both near and far")
        object.__setattr__(self, "near", near)
        object.__setattr__(self, "far", far)
        object.__setattr__(self, "domains", domains)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The labelled tasks, in label order."""
        return tuple(self.near)


def _normalised(scores: np.ndarray) -> np.ndarray:
    """Z-scores of each column over the rows; a constant column is all 0 (constant up to
    rounding: a spread below 1e-9 of the column's magnitude is rounding, not signal)."""
    centred = scores - scores.mean(0, keepdims=True)
    sd = scores.std(0, keepdims=True)
    flat = sd <= 1e-9 * np.abs(scores).max(0, keepdims=True)
    return np.where(flat, 0.0, centred / np.where(flat, 1.0, sd))


def near_far_control(
    scores: ArrayLike, tasks: Sequence[str], domains: Sequence[str], labels: NearFarLabels
) -> dict[str, Any]:
    """Per task, mean normalised score of its near domains minus that of its far domains.

    Args:
        scores: ``(n_tasks, n_domains)``, higher = "this task moves this domain more" (a
            forecast, or a realised matrix oriented alike, e.g. the drop in answer NLL).
        tasks: Row names; every one must be labelled in ``labels`` (≥ 2 tasks).
        domains: Column names; must include every labelled domain of these tasks.
        labels: The pre-registered near/far labels.

    Returns:
        ``per_task`` (``{task: {"near", "far", "margin", "passes"}}``: mean normalised score of
        the near and of the far domains, their difference, and whether it is > 0),
        ``fraction_passing``, ``mean_margin``, ``n_tasks``.

    Example:
        >>> labels = NearFarLabels({"a": ["x"], "b": ["y"]}, {"a": ["y"], "b": ["x"]}, ["x", "y"])
        >>> out = near_far_control([[3.0, 1.0], [1.0, 2.0]], ["a", "b"], ["x", "y"], labels)
        >>> out["fraction_passing"], out["per_task"]["a"]["margin"]
        (1.0, 2.0)
    """
    s = np.asarray(scores, dtype=np.float64)
    tasks, domains = list(tasks), list(domains)
    if s.shape != (len(tasks), len(domains)):
        raise ValueError(
            f"`scores` must be (n_tasks, n_domains) = {(len(tasks), len(domains))}, got {s.shape}"
        )
    if len(tasks) < 2:
        raise ValueError("`tasks` needs >= 2 tasks: scores are normalised across tasks")
    if unlabelled := [t for t in tasks if t not in labels.near]:
        raise ValueError(f"`tasks` {unlabelled} have no near/far labels")
    if not np.isfinite(s).all():
        raise ValueError("`scores` contains NaN or inf")
    z = _normalised(s)
    column = {d: i for i, d in enumerate(domains)}
    per_task = {}
    for row, task in enumerate(tasks):
        means = {}
        for kind in ("near", "far"):
            ds = getattr(labels, kind)[task]
            if missing := [d for d in ds if d not in column]:
                raise ValueError(f"`domains` lacks {missing}, labelled {kind} for {task!r}")
            means[kind] = float(z[row, [column[d] for d in ds]].mean())
        margin = means["near"] - means["far"]
        per_task[task] = means | {"margin": margin, "passes": bool(margin > 0)}
    margins = [v["margin"] for v in per_task.values()]
    return {
        "per_task": per_task,
        "fraction_passing": float(np.mean([v["passes"] for v in per_task.values()])),
        "mean_margin": float(np.mean(margins)),
        "n_tasks": len(tasks),
    }

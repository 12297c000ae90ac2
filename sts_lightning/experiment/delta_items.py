"""The realised change of every task on every domain, item by item.

The experiment measures each fine-tune on the same held-out items of each domain (per seed), so
the realised Δ matrix (tasks × domains) has, per domain, an ``(n_tasks, n_items)`` table of
per-item changes. Splitting or resampling a domain's items then splits or resamples every task's
cell alike, which is what the split-half reliability of the task × domain interaction
(:mod:`~sts_lightning.experiment.specificity`) and its bootstrap
(:mod:`~sts_lightning.experiment.across_tasks`) need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from sts_lightning.reliability import as_vector

__all__ = ["DeltaItems"]


@dataclass(frozen=True, init=False)
class DeltaItems:
    """Per-item realised changes of every task on every domain, the same items for every task.

    The cell ``(t, d)`` of the realised matrix is the weighted mean of ``values[d][t]``: with
    per-item values ``(tuned − base) / weight`` and weights as in
    :func:`~sts_lightning.experiment.realised.item_costs`, that is the domain's Δ.
    """

    tasks: tuple[str, ...]
    """Task names, the matrix's rows."""
    domains: tuple[str, ...]
    """Domain names, the matrix's columns."""
    values: tuple[np.ndarray, ...]
    """Per domain, ``(n_tasks, n_d)`` finite per-item values (n_d ≥ 1)."""
    weights: tuple[np.ndarray, ...]
    """Per domain, ``(n_d,)`` positive item weights, shared by the tasks."""

    def __init__(
        self,
        tasks: Sequence[str],
        domains: Sequence[str],
        values: Sequence[ArrayLike],
        weights: Sequence[ArrayLike] | None = None,
    ):
        tasks, domains = tuple(tasks), tuple(domains)
        if len(set(tasks)) != len(tasks) or len(set(domains)) != len(domains):
            raise ValueError("`tasks` and `domains` must be distinct names")
        if len(values) != len(domains):
            raise ValueError(f"`values` must hold one array per domain ({len(domains)})")
        vals = tuple(np.asarray(v, dtype=np.float64) for v in values)
        for d, v in zip(domains, vals, strict=True):
            if v.ndim != 2 or v.shape[0] != len(tasks) or v.shape[1] == 0:
                raise ValueError(
                    f"`values` of domain {d!r} must be (n_tasks, n_items >= 1), "
                    f"got shape {v.shape} for {len(tasks)} tasks"
                )
            if not np.isfinite(v).all():
                raise ValueError(f"`values` of domain {d!r} contain NaN or inf")
        if weights is None:
            ws = tuple(np.ones(v.shape[1]) for v in vals)
        else:
            ws = tuple(as_vector(f"weights[{d}]", w) for d, w in zip(domains, weights, strict=True))
        if len(ws) != len(vals) or any(
            w.shape != v.shape[1:] for v, w in zip(vals, ws, strict=True)
        ):
            raise ValueError("`weights` must hold one (n_items,) array per domain")
        if any((w <= 0).any() for w in ws):
            raise ValueError("`weights` must be positive (e.g. tokens per item)")
        for name, value in (("tasks", tasks), ("domains", domains)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "values", vals)
        object.__setattr__(self, "weights", ws)

    @classmethod
    def from_matrix(cls, matrix: ArrayLike, tasks: Sequence[str], domains: Sequence[str]):
        """A fixed ``(n_tasks, n_domains)`` matrix as one item per cell (resamples to itself)."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (len(tasks), len(domains)):
            raise ValueError(f"`matrix` must be (n_tasks, n_domains), got shape {m.shape}")
        return cls(tasks, domains, [m[:, d : d + 1] for d in range(m.shape[1])])

    @classmethod
    def from_runs(cls, runs: Mapping[str, Sequence[Mapping]], domains: Sequence[str]):
        """From experiment runs: ``{task: [run, ...]}``, each run with
        ``realised[domain]["items"]`` (``base``, ``tuned``, ``weight``). A task's runs (seeds)
        are concatenated in order, so every task needs the same seeds; items not finite for
        every task are left out."""
        tasks, values, weights = list(runs), [], []
        for d in domains:
            per_task, w_first = [], None
            for task in tasks:
                parts = [r["realised"][d]["items"] for r in runs[task]]
                b, t, w = (
                    np.concatenate([np.asarray(p[k], float) for p in parts])
                    for k in ("base", "tuned", "weight")
                )
                if w_first is not None and (
                    w.shape != w_first.shape or not np.allclose(w, w_first)
                ):
                    raise ValueError(
                        f"task {task!r} was not measured on the same items of domain "
                        f"{d!r} as {tasks[0]!r}: give every task the same seeds"
                    )
                w_first = w
                per_task.append((t - b) / w)
            v = np.stack(per_task)  # (n_tasks, n_items)
            keep = np.isfinite(v).all(0) & (w_first > 0)
            values.append(v[:, keep])
            weights.append(w_first[keep])
        return cls(tasks, domains, values, weights)

    def matrix(self) -> np.ndarray:
        """``(n_tasks, n_domains)`` realised Δ: each cell the weighted mean of its items."""
        return np.stack(
            [v @ w / w.sum() for v, w in zip(self.values, self.weights, strict=True)], axis=1
        )

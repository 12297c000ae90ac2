"""Is the realised change specific to the task? The task × domain interaction and its reliability.

A forecast of *what one training set changes* can only be tested where different training sets
change the domains differently. From the realised Δ of every task on every domain (a
``(n_tasks, n_domains)`` matrix whose cells are item means), this module gives:

- ``inter_task_r``: the Pearson correlation of the Δ vectors of each pair of tasks (near 1: every
  task makes the same change to every domain);
- the **interaction**: the matrix double-centred (each task's mean and each domain's mean
  removed), ``Δ_td − Δ_t· − Δ_·d + Δ_··``: what no per-task constant (one task changes more)
  and no per-domain constant (one domain moves under any fine-tune) can explain;
- its **split-half reliability**: every domain's items split at random into two halves (the same
  halves for every task: the tasks are measured on the same items), the interaction computed on
  each half, the two correlated over all cells and corrected with Spearman–Brown, averaged over
  many seeded splits (the convention of :func:`~sts_lightning.reliability.split_half_reliability`);
- a **verdict** against a target reliability.

Plain numpy in and out; malformed input raises ``ValueError``/``TypeError`` naming the argument.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sts_lightning.experiment.delta_items import DeltaItems
from sts_lightning.reliability import correlate_rows, spearman_brown

__all__ = ["DeltaItems", "double_centre", "halves_reliability", "inter_task_r"]
__all__ += ["interaction_reliability", "task_specificity"]

_NAN = float("nan")


def double_centre(matrix: ArrayLike) -> np.ndarray:
    """Remove row and column means: ``m_td − m_t· − m_·d + m_··`` (over the last two axes).

    Example:
        >>> double_centre([[1.0, 2.0, 6.0], [3.0, 4.0, 2.0]])
        array([[-1., -1.,  2.],
               [ 1.,  1., -2.]])
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim < 2:
        raise ValueError(f"`matrix` must be at least 2-D (n_tasks, n_domains), got {m.shape}")
    rows, cols = m.mean(-1, keepdims=True), m.mean(-2, keepdims=True)
    return m - rows - cols + m.mean((-2, -1), keepdims=True)


def inter_task_r(matrix: ArrayLike, tasks: Sequence[str]) -> dict[str, float]:
    """Pearson r over domains of the Δ vectors of every pair of tasks, keyed ``"a/b"``.

    Example:
        >>> inter_task_r([[1, 2, 3], [2, 4, 7], [3, 2, 1]], ["x", "y", "z"])
        {'x/y': 0.9933992677987828, 'x/z': -1.0, 'y/z': -0.9933992677987828}
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != len(tasks):
        raise ValueError(f"`matrix` must be (n_tasks={len(tasks)}, n_domains), got {m.shape}")
    out = {}
    for (i, a), (j, b) in itertools.combinations(enumerate(tasks), 2):
        out[f"{a}/{b}"] = float(correlate_rows(m[i], m[j])[0])
    return out


def _half_matrices(items: DeltaItems, n_splits: int, rng: np.random.Generator):
    """``(n_splits, n_tasks, n_domains)`` cell means of the two halves of random item splits."""
    a, b = [], []
    for v, w in zip(items.values, items.weights, strict=True):
        n = len(w)
        order = rng.random((n_splits, n)).argsort(axis=1)  # a permutation per split
        in_a = np.zeros((n_splits, n))
        np.put_along_axis(in_a, order[:, : n // 2], 1.0, axis=1)  # half A: floor(n/2) items
        wa, wb = in_a * w, (1.0 - in_a) * w  # (n_splits, n)
        a.append(wa @ v.T / wa.sum(1, keepdims=True))  # (n_splits, n_tasks)
        b.append(wb @ v.T / wb.sum(1, keepdims=True))
    return np.stack(a, axis=2), np.stack(b, axis=2)


def interaction_reliability(
    items: DeltaItems, *, n_splits: int = 200, seed: int = 0, absolute: bool = False
) -> dict[str, Any]:
    """Split-half reliability (Spearman–Brown) of the double-centred realised Δ matrix.

    Each split permutes every domain's items and takes the first ``floor(n_d / 2)`` as half A
    for every task (the tasks share items); each half's matrix is double-centred and the two are
    correlated (Pearson) over all ``n_tasks × n_domains`` cells, then corrected with
    ``2r / (1 + r)``; the result is the mean over splits.

    Args:
        items: The realised per-item changes; ≥ 2 tasks, ≥ 2 domains, ≥ 2 items per domain.
        n_splits: Random splits to average over.
        seed: Seed of the splits.
        absolute: Double-centre |Δ| instead of Δ.

    Returns:
        ``reliability`` (mean corrected correlation; can be negative: no signal), ``std`` (its
        spread over splits, not a standard error), ``r_half`` (mean uncorrected correlation),
        ``n_splits`` (splits with a defined correlation), ``n_tasks``, ``n_domains``,
        ``n_items`` (per domain).
    """
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise ValueError(f"`n_splits` must be a positive int, got {n_splits!r}")
    if len(items.tasks) < 2 or len(items.domains) < 2:
        raise ValueError("`items` needs >= 2 tasks and >= 2 domains to have an interaction")
    if small := [d for d, w in zip(items.domains, items.weights, strict=True) if len(w) < 2]:
        raise ValueError(f"every domain needs >= 2 items to split; `items` domains {small} have 1")
    half_a, half_b = _half_matrices(items, n_splits, np.random.default_rng(seed))
    if absolute:
        half_a, half_b = np.abs(half_a), np.abs(half_b)
    flat = (double_centre(h).reshape(n_splits, -1) for h in (half_a, half_b))
    r_half = correlate_rows(*flat)
    ok = np.isfinite(r_half)
    rel = np.asarray(spearman_brown(r_half[ok]))
    return {
        "reliability": float(rel.mean()) if ok.any() else _NAN,
        "std": float(rel.std(ddof=1)) if ok.sum() > 1 else _NAN,
        "r_half": float(r_half[ok].mean()) if ok.any() else _NAN,
        "n_splits": int(ok.sum()),
        "n_tasks": len(items.tasks),
        "n_domains": len(items.domains),
        "n_items": {d: len(w) for d, w in zip(items.domains, items.weights, strict=True)},
    }


def halves_reliability(half_a: ArrayLike, half_b: ArrayLike) -> float:
    """Spearman–Brown reliability of a matrix's interaction from one split into two halves.

    For a forecast whose domain statistics were computed on two disjoint item halves: the
    double-centred ``(n_tasks, n_domains)`` halves correlated over cells, then ``2r / (1 + r)``.
    NaN when a half's interaction is constant.

    Example:
        >>> a = [[1, 2, 6], [3, 4, 2], [0, 0, 0]]
        >>> round(halves_reliability(a, [[1, 2, 7], [3, 4, 2], [0, 1, 0]]), 4)
        0.9906
    """
    a, b = (double_centre(h) for h in (half_a, half_b))
    if a.shape != b.shape:
        raise ValueError(f"`half_a` and `half_b` must have one shape, got {a.shape} and {b.shape}")
    return float(spearman_brown(correlate_rows(a.ravel(), b.ravel())[0]))


def task_specificity(
    items: DeltaItems,
    target_reliability: float,
    *,
    n_splits: int = 200,
    seed: int = 0,
    absolute: bool = False,
) -> dict[str, Any]:
    """The gate: is the realised change task-specific enough to test a task-specific forecast?

    Args:
        items: The realised per-item changes of every task on every domain.
        target_reliability: The interaction reliability the run must reach, in (0, 1].
        n_splits, seed, absolute: As in :func:`interaction_reliability`.

    Returns:
        ``tasks``, ``domains``, ``matrix`` and ``interaction`` (``{task: {domain: value}}``),
        ``inter_task_r`` (``{"a/b": r}``), ``interaction_reliability`` (the dict of
        :func:`interaction_reliability`), ``target_reliability``, ``specific`` (``True``,
        ``False``, or ``None`` when the reliability is undefined) and ``verdict`` (one
        sentence for the report's top).
    """
    if not 0 < target_reliability <= 1:
        raise ValueError(f"`target_reliability` must be in (0, 1], got {target_reliability!r}")
    m = items.matrix()
    if absolute:
        m = np.abs(m)
    rel = interaction_reliability(items, n_splits=n_splits, seed=seed, absolute=absolute)
    r = rel["reliability"]
    pairs = inter_task_r(m, items.tasks)
    if math.isnan(r):
        specific, verdict = None, "The interaction's reliability is undefined (a constant half)."
    elif r >= target_reliability:
        specific = True
        verdict = (
            f"The realised change is task-specific: the task × domain interaction has "
            f"reliability {r:.2f} >= target {target_reliability:.2f}."
        )
    else:
        specific = False
        top = max(pairs.values(), default=_NAN)
        verdict = (
            f"The realised change is not task-specific enough to test a task-specific "
            f"forecast: the task × domain interaction has reliability {r:.2f} < target "
            f"{target_reliability:.2f} (the tasks' Δ vectors correlate up to {top:.2f}; "
            f"what differs between tasks is not measured above item noise)."
        )

    def named(x: np.ndarray) -> dict[str, dict[str, float]]:
        return {
            t: dict(zip(items.domains, map(float, row), strict=True))
            for t, row in zip(items.tasks, x, strict=False)
        }

    return {
        "tasks": list(items.tasks),
        "domains": list(items.domains),
        "matrix": named(m),
        "interaction": named(double_centre(m)),
        "inter_task_r": pairs,
        "interaction_reliability": rel,
        "target_reliability": float(target_reliability),
        "specific": specific,
        "verdict": verdict,
    }

"""Did the fine-tune learn its source task? Held-out task metrics before/after, and a fixed rule.

A run whose task was not learned tells nothing about transfer: its realised per-domain change is
format drift, not the effect of learning the task. Two held-out metrics of the source task are
compared item by item, before and after fine-tuning:

- **answer NLL**: mean NLL per token of the reference answer given the prompt (teacher-forced),
  with the item-clustered paired SE of its change (:func:`~.analysis.paired_delta`). It moves
  even where greedy exact match stays at 0, as it does for hard tasks at 135M parameters;
- **exact match**: greedy, scored by the task's checker, with Wilson intervals before and after
  and a paired interval of the change.

:func:`is_learned` is the rule, fixed in the recipe before any outcome is seen
(``finetune.learned_margin``, a :class:`LearnedMargin`). A run counts as learned when

1. the answer NLL fell by at least ``nll_drop`` nats/token, **and** the confidence interval of
   the fall excludes 0;
2. exact match did not fall significantly (the interval of its change is not wholly below 0):
   a fine-tune that only teaches the answer's format can lower the NLL of short answers while
   getting fewer of them right;
3. with ``exact_match_gain`` set, exact match also rose by at least that much with its interval
   above 0 (for tasks the model can get right at all; off by default, so tasks whose exact match
   stays near 0 are judged on the NLL).

Every function here is pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from sts_lightning.experiment.analysis import paired_delta

__all__ = ["LearnedMargin", "is_learned", "task_change", "wilson_interval"]

_NAN = float("nan")


@dataclass
class LearnedMargin:
    """The fixed rule that says whether a fine-tune learned its source task."""

    nll_drop: float = 0.1
    """Least fall of the held-out answer NLL (nats/token) for a learned task; the fall's
    confidence interval must exclude 0 as well."""
    exact_match_gain: float | None = None
    """Least rise of held-out exact match (a fraction: 0.05 = 5 points), with its interval above
    0; ``None``: exact match must only not fall significantly (robust where it stays near 0)."""
    confidence: float = 0.95
    """Level of every interval (Wilson, paired normal)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.nll_drop, (int, float)) and self.nll_drop >= 0):
            raise ValueError(
                f"`learned_margin.nll_drop` must be >= 0 nats/token, got {self.nll_drop!r}"
            )
        gain = self.exact_match_gain
        if gain is not None and not (isinstance(gain, (int, float)) and 0 <= gain <= 1):
            raise ValueError(
                f"`learned_margin.exact_match_gain` must be in [0, 1] or None, got {gain!r}"
            )
        if not (isinstance(self.confidence, float) and 0 < self.confidence < 1):
            raise ValueError(
                f"`learned_margin.confidence` must be in (0, 1), got {self.confidence!r}"
            )


def _z(confidence: float) -> float:
    return float(sps.norm.ppf(0.5 + confidence / 2))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (sensible at 0 and at ``n``).

    Example:
        >>> [round(x, 4) for x in wilson_interval(0, 10)]
        [0.0, 0.2775]
        >>> [round(x, 4) for x in wilson_interval(5, 10)]
        [0.2366, 0.7634]
    """
    if n < 1:
        return _NAN, _NAN
    z, p = _z(confidence), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 (k = n) the bound is exactly 0 (1); the formula leaves rounding error there.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    return low, 1.0 if k == n else min(1.0, centre + half)


def _paired_interval(d: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean of item differences ``d`` and its normal interval (NaN bounds for < 2 items)."""
    if len(d) == 0:
        return _NAN, _NAN, _NAN
    mean = float(d.mean())
    if len(d) < 2:
        return mean, _NAN, _NAN
    half = _z(confidence) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return mean, mean - half, mean + half


def task_change(
    nll_before: ArrayLike,
    nll_after: ArrayLike,
    counts: ArrayLike,
    correct_before: ArrayLike,
    correct_after: ArrayLike,
    *,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Held-out task metrics before and after fine-tuning, paired by item, with intervals.

    Args:
        nll_before: Summed answer NLL of each held-out problem, base model ``(n,)``.
        nll_after: The same after fine-tuning ``(n,)``.
        counts: Answer tokens of each problem ``(n,)``.
        correct_before: 1/0 greedy exact match of each problem, base model ``(m,)``.
        correct_after: The same after fine-tuning ``(m,)``.
        confidence: Level of the intervals.

    Returns:
        ``answer_nll_before``/``_after`` (nats/token), ``answer_nll_delta`` (after − before),
        ``answer_nll_se`` and ``answer_nll_ci`` (of the delta); ``exact_match_before``/``_after``
        with ``..._ci`` (Wilson), ``exact_match_change`` with ``exact_match_change_ci``
        (paired); ``n_items`` (NLL) and ``n_exact_match``.

    Example:
        >>> c = task_change([4.0, 6.0], [2.0, 2.0], [2, 2], [0, 1], [1, 1])
        >>> c["answer_nll_before"], c["answer_nll_after"], c["answer_nll_delta"]
        (2.5, 1.0, -1.5)
        >>> c["exact_match_before"], c["exact_match_after"], c["exact_match_change"]
        (0.5, 1.0, 0.5)
    """
    b, a, c = (np.asarray(v, dtype=np.float64) for v in (nll_before, nll_after, counts))
    out: dict[str, Any] = {"n_items": len(c)}
    if len(c) and c.sum() > 0:
        delta, se = paired_delta(b, a, c)
        half = _z(confidence) * se
        out |= {
            "answer_nll_before": float(b.sum() / c.sum()),
            "answer_nll_after": float(a.sum() / c.sum()),
            "answer_nll_delta": delta,
            "answer_nll_se": se,
            "answer_nll_ci": (delta - half, delta + half),
        }
    else:  # no held-out problems: nothing to judge on
        out |= {"answer_nll_before": _NAN, "answer_nll_after": _NAN, "answer_nll_delta": _NAN}
        out |= {"answer_nll_se": _NAN, "answer_nll_ci": (_NAN, _NAN)}
    hit_b, hit_a = (np.asarray(v, dtype=np.float64) for v in (correct_before, correct_after))
    if hit_b.shape != hit_a.shape:
        raise ValueError(
            f"`correct_before` and `correct_after` must score the same problems, got "
            f"{hit_b.shape} and {hit_a.shape}"
        )
    n = len(hit_b)
    mean, low, high = _paired_interval(hit_a - hit_b, confidence)
    out |= {
        "n_exact_match": n,
        "exact_match_before": float(hit_b.mean()) if n else _NAN,
        "exact_match_after": float(hit_a.mean()) if n else _NAN,
        "exact_match_before_ci": wilson_interval(int(hit_b.sum()), n, confidence),
        "exact_match_after_ci": wilson_interval(int(hit_a.sum()), n, confidence),
        "exact_match_change": mean,
        "exact_match_change_ci": (low, high),
    }
    return out


def is_learned(change: Mapping[str, Any], margin: LearnedMargin) -> tuple[bool, list[str]]:
    """Apply the learned rule (module docstring) to a :func:`task_change` result.

    Returns:
        ``(learned, reasons)``: ``reasons`` says why not (empty when learned).

    Example:
        >>> is_learned({"answer_nll_delta": -0.3, "answer_nll_ci": (-0.4, -0.2),
        ...             "exact_match_change_ci": (-0.05, 0.1)}, LearnedMargin(nll_drop=0.1))
        (True, [])
        >>> is_learned({"answer_nll_delta": 0.0, "answer_nll_ci": (0.0, 0.0),
        ...             "exact_match_change_ci": (0.0, 0.0)}, LearnedMargin(nll_drop=0.1))[1]
        ['answer NLL fell 0 nats/token (< 0.1)', 'the interval of the answer-NLL fall includes 0']
    """
    reasons = []
    drop = 0.0 - float(change.get("answer_nll_delta", _NAN))  # 0.0 - 0.0 is +0
    if not math.isfinite(drop):
        reasons.append("no held-out answer NLL to judge on")
    else:
        if drop < margin.nll_drop:
            reasons.append(f"answer NLL fell {drop:.3g} nats/token (< {margin.nll_drop:g})")
        if not -float(change["answer_nll_ci"][1]) > 0:  # the fall's lower bound; NaN fails
            reasons.append("the interval of the answer-NLL fall includes 0")
    low, high = (float(x) for x in change.get("exact_match_change_ci", (_NAN, _NAN)))
    if high < 0:
        reasons.append(f"exact match fell significantly (interval of the change up to {high:.3g})")
    if margin.exact_match_gain is not None:
        gain = float(change.get("exact_match_change", _NAN))
        if not (gain >= margin.exact_match_gain and low > 0):
            reasons.append(
                f"exact match rose {gain:.3g} (needs >= {margin.exact_match_gain:g} with its "
                "interval above 0)"
            )
    return not reasons, reasons


def split_learned(runs: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """``(learned, not learned)`` runs by their ``task_learning["learned"]`` verdict, in order.

    A run without a ``task_learning`` record counts as not learned: nothing shows that its
    realised change reflects the task. A verdict of ``None`` (no rule was set) counts as
    learned: the user asked for every run to be analysed.
    """
    learned = [
        r for r in runs if (r.get("task_learning") or {}).get("learned", False) in (True, None)
    ]
    return learned, [r for r in runs if r not in learned]


def learning_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run for the report: task, seed, verdict, reasons and the metrics."""
    keys = ("answer_nll_before", "answer_nll_after", "answer_nll_delta", "answer_nll_ci")
    keys += ("exact_match_before", "exact_match_after", "exact_match_before_ci")
    keys += ("exact_match_after_ci", "exact_match_change", "exact_match_change_ci")
    keys += ("n_items", "n_exact_match")
    rows = []
    for run in runs:
        judged = run.get("task_learning") or {}
        row = {"task": run["task"], "seed": run["seed"]}
        row["steps"], row["step_budget"] = run.get("steps"), run.get("step_budget")
        row["learned"] = judged.get("learned", False)  # None: no rule set
        row["reasons"] = list(judged.get("reasons", ["no held-out task problems"]))
        rows.append(row | {k: judged.get(k, _NAN) for k in keys})
    return rows

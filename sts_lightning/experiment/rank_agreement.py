"""Did the forecast rank the tasks' realised damage to each domain correctly?

Correlations over domains (:mod:`~sts_lightning.experiment.summary`) ask which *domains* a task
moves most. A user choosing between training sets asks the transposed question: for a given
domain, which *task* moves it most? For each domain d and predictor p, compare the tasks'
forecast scores ``p[t][d]`` with their realised ``|Δ[t][d]|``:

- **fraction ordered correctly**: over the domain's task pairs, the share whose forecast order
  is the realised order (a tie on either side counts ½); with 2 tasks it is 0 or 1 per domain;
- **Kendall τ** (τ-b) over the tasks, per domain, when there are ≥ 3 tasks.

Both are averaged over domains, with a seeded percentile bootstrap CI over domains.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from sts_lightning.config import positive_int

__all__ = ["rank_agreement", "rank_agreement_table"]


def _pair_fraction(x: np.ndarray, y: np.ndarray) -> float:
    """Share of index pairs ordered alike in ``x`` and ``y`` (ties ½); NaN without pairs."""
    scores = []
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        scores.append(0.5 if a == 0 or b == 0 else float(a == b))
    return float(np.mean(scores)) if scores else float("nan")


def _bootstrap_mean(values: np.ndarray, n_bootstrap: int, seed: int, level: float):
    """Mean of the finite ``values`` and its percentile CI over resampled entries."""
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(len(values), size=(n_bootstrap, len(values)))].mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(low), float(high)


def rank_agreement(
    forecast: Mapping[str, Mapping[str, float]],
    realised: Mapping[str, Mapping[str, float]],
    *,
    n_bootstrap: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-domain agreement of the tasks' forecast order with their realised order.

    Args:
        forecast: ``{task: {domain: score}}``, ≥ 2 tasks over the same domains.
        realised: ``{task: {domain: |Δ|}}`` over the same tasks and domains.
        n_bootstrap: Resamples of the domains for the CIs.
        level: CI coverage.
        seed: Seed of the resampling.

    Returns:
        ``fraction`` / ``fraction_ci`` (mean over domains of the share of task pairs ordered
        correctly), ``kendall`` / ``kendall_ci`` (mean per-domain τ-b, NaN with 2 tasks),
        ``per_domain`` ``{domain: {"fraction", "kendall"}}``, ``n_tasks``, ``n_domains``.

    Raises:
        ValueError: Fewer than 2 tasks, or tasks/domains that differ between the two mappings.
    """
    from scipy import stats

    positive_int("n_bootstrap", n_bootstrap)
    tasks = list(forecast)
    if len(tasks) < 2 or list(realised) != tasks:
        raise ValueError(f"`forecast` and `realised` need the same >= 2 tasks, got {tasks}")
    domains = list(forecast[tasks[0]])
    for name, table in (("forecast", forecast), ("realised", realised)):
        for t in tasks:
            if list(table[t]) != domains:
                raise ValueError(f"`{name}[{t!r}]` does not have the domains {domains}")
    per_domain = {}
    for d in domains:
        x = np.array([forecast[t][d] for t in tasks], dtype=float)
        y = np.array([realised[t][d] for t in tasks], dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        tau = float("nan")
        if len(tasks) >= 3 and ok.sum() >= 3:
            tau = float(stats.kendalltau(x[ok], y[ok]).statistic)
        per_domain[d] = {"fraction": _pair_fraction(x[ok], y[ok]), "kendall": tau}
    out: dict[str, Any] = {"n_tasks": len(tasks), "n_domains": len(domains)}
    for key in ("fraction", "kendall"):
        values = np.array([v[key] for v in per_domain.values()], dtype=float)
        mean, low, high = _bootstrap_mean(values, n_bootstrap, seed, level)
        out |= {key: mean, f"{key}_ci": [low, high]}
    return out | {"level": level, "per_domain": per_domain}


def _f(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3g}"


def rank_agreement_table(results: Mapping[str, Any]) -> tuple[str, str, str, list[str], list]:
    """The report table ``(key, title, note, head, rows)`` of ``results["rank_agreement"]``."""
    agreement = results["rank_agreement"]
    rows = []
    for p, a in agreement.items():
        f_lo, f_hi = a["fraction_ci"]
        k_lo, k_hi = a["kendall_ci"]
        rows.append(
            [
                p,
                f"{_f(a['fraction'])} [{_f(f_lo)}, {_f(f_hi)}]",
                f"{_f(a['kendall'])} [{_f(k_lo)}, {_f(k_hi)}]",
                a["n_domains"],
                a["n_tasks"],
            ]
        )
    level = next(iter(agreement.values()))["level"] if agreement else 0.95
    head = ["predictor", f"fraction ordered correctly [{level:.0%} CI]", "Kendall τ [CI]"]
    note = (
        "For each domain: do the tasks' forecast scores order the tasks as their realised |Δ| "
        "does? Share of task pairs ordered correctly (½ = chance; 0 or 1 per domain with two "
        "tasks) and Kendall τ over tasks (≥ 3 tasks), averaged over domains, bootstrap CI over "
        "domains."
    )
    title = "Did the forecast rank the tasks' damage to each domain?"
    return ("rank_agreement", title, note, [*head, "domains", "tasks"], rows)

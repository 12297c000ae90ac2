"""Can the run tell? What the data allow the experiment's correlations to show, and the tests
that compare predictors head to head.

For each source task (its learned runs):

- **reliability** (split-half over items, Spearman–Brown corrected;
  :func:`~sts_lightning.reliability.split_half_reliability`) of the realised change |Δ|
  (and of signed Δ) from the per-item changes, of the base-loss control from the per-item base
  NLL, and of every forecast from its two halves (the domain statistics computed on two
  disjoint halves of each domain's items: one split, so no spread);
- the **noise ceiling** √(rel_forecast · rel_realised) of every forecast's correlation;
- **paired tests** of every STS mode against the best control (the control that correlates
  best with |Δ| on these data: a choice that favours the control) and against the same
  pipeline on raw residual neurons: Williams' t for dependent correlations (Steiger 1980) and
  a bootstrap CI of r_STS − r_other over domains and items
  (:func:`~sts_lightning.paired.paired_bootstrap_diff`). Pearson throughout, as Williams' test
  assumes.

The pre-registered primary hypothesis is :data:`~sts_lightning.forecast.modes.PRIMARY`: STS_act
and STS_ICL correlate positively with |Δ| of the recipe's primary metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sts_lightning.forecast.modes import raw_twins
from sts_lightning.paired import DomainItems, paired_bootstrap_diff, williams_test
from sts_lightning.reliability import correlate_rows, noise_ceiling, spearman_brown
from sts_lightning.reliability import split_half_reliability as split_half

__all__ = ["CONTROLS", "RAW_TWIN", "measure_task", "realised_items"]

CONTROLS = ("repsim_sae", "repsim_resid", "base_loss")
"""Forecast-time controls an STS mode must beat."""
RAW_TWIN = raw_twins()
"""Each STS mode (and contrast mode) and the same pipeline on raw residual neurons."""


def _items(runs: Sequence[dict], domain: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One domain's per-item values over ``runs``: the change ``(tuned − base) / weight`` with
    its weight (``key="change"``), or the base model's NLL per token (``key="base_nll"``)."""
    values, weights = [], []
    for run in runs:
        realised = run["realised"][domain]
        if key == "change":
            items = realised["items"]
            b, t, w = (np.asarray(items[k], dtype=float) for k in ("base", "tuned", "weight"))
            v = (t - b) / w
        else:  # the base-loss control: summed NLL per item over its content tokens
            per_item = realised["per_item"]
            w = np.asarray(per_item["item_tokens"], dtype=float)
            v = np.asarray(per_item["item_nll"]["base"], dtype=float) / w
        keep = np.isfinite(v) & (w > 0)
        values.append(v[keep])
        weights.append(w[keep])
    return np.concatenate(values), np.concatenate(weights)


def realised_items(runs: Sequence[dict], domains: Sequence[str]) -> DomainItems:
    """The realised change of each domain as items: ``(tuned − base) / weight``, weighted, so a
    domain's weighted mean is its Δ (pooled over ``runs``)."""
    pairs = [_items(runs, d, "change") for d in domains]
    return DomainItems([v for v, _ in pairs], [w for _, w in pairs])


def _split_half(runs, domains, key: str, transform=None, seed: int = 0) -> dict[str, Any]:
    """Split-half reliability of the per-domain mean of ``key`` items; NaN when impossible."""
    pairs = [_items(runs, d, key) for d in domains]
    if len(domains) < 3 or min(len(v) for v, _ in pairs) < 2:
        return {"reliability": float("nan"), "std": float("nan"), "n_splits": 0}
    values = np.concatenate([v for v, _ in pairs])
    weights = np.concatenate([w for _, w in pairs])
    labels = np.repeat(np.arange(len(domains)), [len(v) for v, _ in pairs])
    out = split_half(values, labels, weights=weights, transform=transform, seed=seed)
    return {k: out[k] for k in ("reliability", "std", "n_splits")}


def forecast_reliability(runs: Sequence[dict], domains: Sequence[str]) -> dict[str, float]:
    """Per predictor: the Spearman–Brown corrected correlation across domains of its two
    halves (seed means); NaN when the runs carry no halves or a half is constant."""
    if not all("score_halves" in r for r in runs):
        return {}
    out = {}
    for p in runs[0]["score_halves"]["a"][domains[0]]:
        halves = [
            [np.mean([r["score_halves"][h][d][p] for r in runs]) for d in domains]
            for h in ("a", "b")
        ]
        a, b = (np.asarray(x, dtype=float) for x in halves)
        ok = np.isfinite(a) & np.isfinite(b)
        r = correlate_rows(a[ok], b[ok])[0] if ok.sum() >= 3 else float("nan")
        out[p] = float(spearman_brown(r))
    return out


def _compare(table, domains, mode: str, other: str, target: DomainItems, n_boot, seed):
    """Williams' t and the paired bootstrap of r(mode, |Δ|) − r(other, |Δ|)."""
    x = np.array([table[d][mode] for d in domains], dtype=float)
    y = np.array([table[d][other] for d in domains], dtype=float)
    delta = np.abs(target.means())
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or len(domains) < 4:
        return None
    r_jk, r_jh, r_kh = (float(correlate_rows(a, b)[0]) for a, b in ((delta, x), (delta, y), (x, y)))
    if not all(np.isfinite([r_jk, r_jh, r_kh])) or abs(r_kh) >= 1:
        return None
    t, p = williams_test(r_jk, r_jh, r_kh, len(domains))
    boot = paired_bootstrap_diff(x, y, target, method="pearson", n_boot=n_boot, seed=seed,
                                 target_transform=np.abs)  # fmt: skip
    return {
        "vs": other,
        "r": r_jk,
        "r_other": r_jh,
        "r_between": r_kh,
        "williams_t": t,
        "williams_p": p,
        "diff": boot["diff"],
        "ci": list(boot["ci"]),
        "bootstrap_p": boot["p"],
    }


def best_control(table, domains, target: DomainItems) -> str | None:
    """The control with the highest Pearson r with |Δ| on these data (``None`` without any)."""
    delta, best, best_r = np.abs(target.means()), None, -np.inf
    for c in CONTROLS:
        if c not in table[domains[0]]:
            continue
        x = np.array([table[d][c] for d in domains], dtype=float)
        r = correlate_rows(x, delta)[0] if np.isfinite(x).all() else np.nan
        if np.isfinite(r) and r > best_r:
            best, best_r = c, r
    return best


def measure_task(
    runs: Sequence[dict], table: dict[str, dict[str, float]], *, n_bootstrap: int, seed: int = 0
) -> dict[str, Any] | None:
    """Reliabilities, ceilings and paired tests of one task's learned runs.

    Args:
        runs: The task's runs (records with ``realised[domain]["items"]`` and, for the forecast
            reliabilities, ``score_halves``).
        table: The seed-mean table of :func:`~sts_lightning.experiment.summary.summarise_runs`.
        n_bootstrap: Resamples of each paired bootstrap.
        seed: Seed of the splits and resamples.

    Returns:
        ``realised`` (split-half reliability of |Δ| and of Δ), ``base_loss`` (of the control),
        ``forecast`` (``{predictor: reliability}``), ``ceiling`` (``{predictor: √(rel·rel_|Δ|)}``),
        ``best_control``, ``tests`` (``{mode: [comparison, ...]}``), ``n_domains``,
        ``items_per_domain``; ``None`` when the runs carry no per-item values.
    """
    domains = list(table)
    if not all("items" in r["realised"][d] for r in runs for d in domains):
        return None  # results without per-item values (older runs): nothing to measure
    target = realised_items(runs, domains)
    realised = {
        "abs": _split_half(runs, domains, "change", np.abs, seed),
        "signed": _split_half(runs, domains, "change", None, seed),
    }
    forecast = forecast_reliability(runs, domains)
    has_items = all("per_item" in r["realised"][d] for r in runs for d in domains)
    base = _split_half(runs, domains, "base_nll", None, seed) if has_items else None
    if base is not None:
        forecast["base_loss"] = base["reliability"]
    rel = realised["abs"]["reliability"]
    ceiling = {p: noise_ceiling(min(r, 1.0), min(rel, 1.0)) for p, r in forecast.items()}
    control = best_control(table, domains, target)
    tests = {}
    for mode, raw in RAW_TWIN.items():
        if mode not in table[domains[0]]:
            continue
        others = [o for o in (control, raw) if o is not None and o in table[domains[0]]]
        found = [_compare(table, domains, mode, o, target, n_bootstrap, seed) for o in others]
        tests[mode] = [f for f in found if f is not None]
    return {
        "realised": realised,
        "base_loss": base,
        "forecast": forecast,
        "ceiling": ceiling,
        "best_control": control,
        "tests": tests,
        "n_domains": len(domains),
        "items_per_domain": {d: len(v) for d, v in zip(domains, target.values, strict=True)},
    }

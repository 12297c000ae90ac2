"""Does a forecast predict how the change *differs* between tasks and domains?

``across_tasks`` correlates the double-centred forecast matrix with the double-centred realised
matrix over all task × domain cells: with each task's mean and each domain's mean removed, what
is left is which task moves which domain more than its row and column say; no per-domain constant
(a domain that moves under any fine-tune, a domain the forecast always scores high) and no
per-task constant can produce it. Beside r: a two-stage bootstrap CI (domains with replacement,
then each drawn domain's items, the same items for every task, as
:func:`~sts_lightning.paired.paired_bootstrap_diff` does for one task), the noise ceiling
√(rel_interaction · rel_forecast), and a paired bootstrap of two forecasts on the same statistic.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sts_lightning.experiment.delta_items import DeltaItems
from sts_lightning.experiment.specificity import double_centre, interaction_reliability
from sts_lightning.reliability import correlate_rows, noise_ceiling

__all__ = ["across_tasks", "across_tasks_paired", "check_bootstrap", "resample_matrices"]

_CHUNK = 256  # resampled slots per block: bounds memory at _CHUNK × items of a domain


def resample_matrices(
    items: DeltaItems, n_boot: int, rng: np.random.Generator, *, domains: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage bootstrap of the realised matrix: domains, then each drawn domain's items.

    Every slot of every resample draws its domain's items afresh with replacement; the tasks
    share the draw (they were measured on the same items). A domain with one item resamples to
    itself.

    Args:
        items: The realised per-item changes.
        n_boot: Resamples.
        rng: Random generator.
        domains: Draw the domains with replacement (False: every domain once, in its place).

    Returns:
        ``(matrices, chosen)``: ``(n_boot, n_tasks, n_domains)`` resampled matrices and the
        ``(n_boot, n_domains)`` domain index in each slot (to resample a forecast alike:
        ``forecast[:, chosen].transpose(1, 0, 2)``).
    """
    n_dom, n_tasks = len(items.domains), len(items.tasks)
    if domains:
        chosen = rng.integers(n_dom, size=(n_boot, n_dom))
    else:
        chosen = np.broadcast_to(np.arange(n_dom), (n_boot, n_dom))
    out = np.empty((n_boot, n_tasks, n_dom))
    for d, (v, w) in enumerate(zip(items.values, items.weights, strict=True)):
        rows, cols = np.nonzero(chosen == d)  # every slot where domain d was drawn
        if len(w) == 1:
            out[rows, :, cols] = v[:, 0]
            continue
        for start in range(0, len(rows), _CHUNK):
            r, c = rows[start : start + _CHUNK], cols[start : start + _CHUNK]
            idx = rng.integers(len(w), size=(len(r), len(w)))  # (slots, n_d) item draws
            ww = w[idx]
            out[r, :, c] = np.einsum("sn,tsn->st", ww, v[:, idx]) / ww.sum(1, keepdims=True)
    return out, chosen


def _forecast(name: str, forecast: ArrayLike, items: DeltaItems) -> np.ndarray:
    f = np.asarray(forecast, dtype=np.float64)
    shape = (len(items.tasks), len(items.domains))
    if f.shape != shape:
        raise ValueError(f"`{name}` must be (n_tasks, n_domains) = {shape}, got {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"`{name}` contains NaN or inf")
    return f


def _cell_r(forecast: np.ndarray, realised: np.ndarray) -> np.ndarray:
    """Pearson r over cells of the double-centred matrices, ``(..., T, D)`` → ``(...)``."""
    lead = realised.shape[:-2]
    f, r = (double_centre(m).reshape(*lead, -1) for m in (forecast, realised))
    return correlate_rows(f, r).reshape(lead) if lead else correlate_rows(f, r)[0]


def check_bootstrap(n_boot: int, level: float) -> None:
    """``n_boot`` is a positive int and ``level`` in (0, 1), each error naming its argument."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"`n_boot` must be a positive int, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}")


def _checked(items: DeltaItems, n_boot: int, level: float) -> None:
    if len(items.tasks) < 2 or len(items.domains) < 3:
        raise ValueError("`realised` needs >= 2 tasks and >= 3 domains")
    check_bootstrap(n_boot, level)


def _boot(forecasts, items, n_boot, seed, absolute) -> list[np.ndarray]:
    """Per forecast, the ``(n_boot,)`` resampled r (NaN where undefined)."""
    realised, chosen = resample_matrices(items, n_boot, np.random.default_rng(seed))
    if absolute:
        realised = np.abs(realised)
    return [_cell_r(f[:, chosen].transpose(1, 0, 2), realised) for f in forecasts]


def across_tasks(
    forecast: ArrayLike,
    realised: DeltaItems,
    *,
    rel_forecast: float | None = None,
    rel_interaction: float | None = None,
    absolute: bool = False,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Pearson r between the double-centred forecast and realised matrices over all cells.

    Args:
        forecast: ``(n_tasks, n_domains)`` forecast scores, rows and columns in ``realised``'s
            order of tasks and domains.
        realised: The realised per-item changes (≥ 2 tasks, ≥ 3 domains).
        rel_forecast: Reliability of the forecast's interaction (e.g.
            :func:`~sts_lightning.experiment.specificity.halves_reliability` of its two
            halves); None: no ceiling.
        rel_interaction: Reliability of the realised interaction; None: computed with
            :func:`~sts_lightning.experiment.specificity.interaction_reliability` (same
            ``absolute`` and ``seed``; needs ≥ 2 items per domain, else NaN).
        absolute: Correlate with the interaction of |Δ| instead of Δ.
        n_boot, level, seed: The bootstrap's resamples, coverage and seed.

    Returns:
        ``r``, ``ci`` ``(low, high)`` (percentile interval over resamples with a defined r;
        NaN when none), ``n_cells``, ``n_boot`` (resamples used), ``level``,
        ``rel_interaction``, ``rel_forecast`` (NaN when not given) and ``ceiling``
        √(rel_interaction · rel_forecast) (NaN without ``rel_forecast``).
    """
    _checked(realised, n_boot, level)
    f = _forecast("forecast", forecast, realised)
    m = realised.matrix()
    r = float(_cell_r(f, np.abs(m) if absolute else m))
    boots = _boot([f], realised, n_boot, seed, absolute)[0]
    boots = boots[np.isfinite(boots)]
    q = [(1 - level) / 2, (1 + level) / 2]
    ci = tuple(float(x) for x in np.quantile(boots, q)) if len(boots) else (math.nan,) * 2
    if rel_interaction is None:
        few = min(len(w) for w in realised.weights) < 2
        rel_interaction = (
            math.nan
            if few
            else interaction_reliability(realised, seed=seed, absolute=absolute)["reliability"]
        )
    rel_f = math.nan if rel_forecast is None else float(rel_forecast)
    ceiling = noise_ceiling(min(rel_interaction, 1.0), min(rel_f, 1.0))
    return {
        "r": r,
        "ci": ci,
        "n_cells": f.size,
        "n_boot": len(boots),
        "level": level,
        "rel_interaction": float(rel_interaction),
        "rel_forecast": rel_f,
        "ceiling": ceiling,
    }


def across_tasks_paired(
    forecast_a: ArrayLike,
    forecast_b: ArrayLike,
    realised: DeltaItems,
    *,
    absolute: bool = False,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap of ``r_a − r_b``, two forecasts' :func:`across_tasks` r, same resamples.

    Returns:
        ``diff``, ``r_a``, ``r_b``, ``ci``, ``p`` (two-sided, with the convention of
        :func:`~sts_lightning.paired.paired_bootstrap_diff`: twice ``(k + 1) / (n + 1)``, k
        the resamples on the other side of 0, at most 1; 1 when ``diff`` is 0), ``n_boot``,
        ``level``.
    """
    _checked(realised, n_boot, level)
    fa, fb = (
        _forecast("forecast_a", forecast_a, realised),
        _forecast("forecast_b", forecast_b, realised),
    )
    m = realised.matrix()
    m = np.abs(m) if absolute else m
    r_a, r_b = float(_cell_r(fa, m)), float(_cell_r(fb, m))
    boot_a, boot_b = _boot([fa, fb], realised, n_boot, seed, absolute)
    diffs = boot_a - boot_b
    diffs = diffs[np.isfinite(diffs)]
    diff = r_a - r_b
    low = high = p = math.nan
    if len(diffs) and math.isfinite(diff):
        low, high = (float(x) for x in np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2]))
        beyond = int((diffs <= 0).sum() if diff > 0 else (diffs >= 0).sum())
        p = 1.0 if diff == 0 else min(1.0, 2 * (beyond + 1) / (len(diffs) + 1))
    return {
        "diff": diff,
        "r_a": r_a,
        "r_b": r_b,
        "ci": (low, high),
        "p": p,
        "n_boot": len(diffs),
        "level": level,
    }

"""Does a forecast rank candidate training sets right for a given domain?

The question ``predict --train_sets`` answers: "which of my candidate sets moves my protected
domain least?". Per domain, Kendall's τ-b between the forecast's order of the tasks and the
realised order; then the mean over domains, with a two-stage bootstrap CI (domains, then each
drawn domain's items, shared by the tasks;
:func:`~sts_lightning.experiment.across_tasks.resample_matrices`). A per-domain constant cannot
help or hurt: each domain's τ compares tasks within that domain only.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sts_lightning.experiment.across_tasks import check_bootstrap, resample_matrices
from sts_lightning.experiment.delta_items import DeltaItems

__all__ = ["kendall_tau_b", "set_ranking"]

MIN_TASKS = 3
"""Fewer tasks give a τ of ±1 only: no ranking to test."""


def kendall_tau_b(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Kendall's τ-b of each row of ``x`` with the same row of ``y`` (ties counted as scipy).

    ``Σ_{i<j} s_x s_y / sqrt(Σ s_x² · Σ s_y²)`` with ``s = sign(v_i − v_j)``.

    Args:
        x, y: ``(..., n)`` values, one shape.

    Returns:
        ``(...)`` τ-b; NaN for a row where ``x`` or ``y`` is constant.

    Example:
        >>> round(float(kendall_tau_b([1, 2, 3, 4], [1, 3, 2, 4])), 4)
        0.6667
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim < 1:
        raise ValueError(f"`x` and `y` must have one shape (..., n), got {xs.shape}, {ys.shape}")
    i, j = (
        np.array(k, dtype=int)
        for k in zip(*itertools.combinations(range(xs.shape[-1]), 2), strict=True)
    )
    sx = np.sign(xs[..., i] - xs[..., j])  # (..., n_pairs)
    sy = np.sign(ys[..., i] - ys[..., j])
    denom = np.sqrt((sx * sx).sum(-1) * (sy * sy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (sx * sy).sum(-1) / np.where(denom > 0, denom, 1.0), np.nan)


def set_ranking(
    forecast: ArrayLike,
    realised: DeltaItems,
    *,
    absolute: bool = False,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per domain, τ-b between the forecast's and the realised order of the tasks; their mean.

    Args:
        forecast: ``(n_tasks, n_domains)`` scores in ``realised``'s task and domain order;
            higher means "moves this domain more", as the realised value (Δ, or |Δ| with
            ``absolute``).
        realised: The realised per-item changes; ≥ 3 tasks, ≥ 1 domain. A fixed matrix
            (:meth:`~sts_lightning.experiment.specificity.DeltaItems.from_matrix`) is resampled
            over domains only.
        absolute: Rank the tasks by |Δ| instead of Δ.
        n_boot, level, seed: The bootstrap's resamples, coverage and seed.

    Returns:
        ``per_domain`` (``{domain: τ}``, NaN where either order is all ties), ``mean`` (over
        domains with a defined τ), ``ci`` ``(low, high)``, ``n_domains`` (with a defined τ),
        ``n_tasks``, ``n_boot`` (resamples with a defined mean), ``level``.

    Raises:
        ValueError: Fewer than :data:`MIN_TASKS` tasks, or a forecast of the wrong shape.
    """
    if len(realised.tasks) < MIN_TASKS:
        raise ValueError(
            f"set ranking needs >= {MIN_TASKS} tasks to order; `realised` has "
            f"{len(realised.tasks)}: {list(realised.tasks)}"
        )
    check_bootstrap(n_boot, level)
    f = np.asarray(forecast, dtype=np.float64)
    if f.shape != (len(realised.tasks), len(realised.domains)):
        raise ValueError(
            f"`forecast` must be (n_tasks, n_domains) = "
            f"{(len(realised.tasks), len(realised.domains))}, got {f.shape}"
        )
    m = realised.matrix()
    tau = kendall_tau_b(f.T, np.abs(m).T if absolute else m.T)  # (n_domains,)
    boot, chosen = resample_matrices(realised, n_boot, np.random.default_rng(seed))
    if absolute:
        boot = np.abs(boot)
    boot_tau = kendall_tau_b(f[:, chosen].transpose(1, 2, 0), boot.transpose(0, 2, 1))
    defined = np.isfinite(boot_tau).any(1)  # (n_boot,)
    means = np.array([np.nanmean(t) for t in boot_tau[defined]])
    q = [(1 - level) / 2, (1 + level) / 2]
    ci = tuple(float(x) for x in np.quantile(means, q)) if len(means) else (math.nan,) * 2
    ok = np.isfinite(tau)
    return {
        "per_domain": dict(zip(realised.domains, map(float, tau), strict=True)),
        "mean": float(tau[ok].mean()) if ok.any() else math.nan,
        "ci": ci,
        "n_domains": int(ok.sum()),
        "n_tasks": len(realised.tasks),
        "n_boot": len(means),
        "level": level,
    }

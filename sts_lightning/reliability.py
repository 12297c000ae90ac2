"""Can the data tell? Split-half reliability of per-domain vectors, its ceiling, sign accuracy.

A correlation over domains between two noisy vectors cannot exceed ``sqrt(rel_x · rel_y)``, where
``rel`` is how well each vector would correlate with itself re-measured on fresh items. Split-half
estimates it from the items at hand: split every domain's items at random into two halves, compute
the per-domain vector on each half, correlate the two, and correct the half-length correlation to
full length with Spearman–Brown. Plain floats and numpy arrays in and out; bad input raises
``ValueError``/``TypeError`` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

__all__ = ["correlate_rows", "noise_ceiling", "reliability_of_mean", "sign_accuracy"]
__all__ += ["spearman_brown", "split_half_reliability"]

METHODS = ("pearson", "spearman")
_NAN = float("nan")


def as_vector(name: str, x: Any, *, finite: bool = True) -> np.ndarray:
    """``x`` as a float64 ``(n,)`` array, or an error naming ``name``."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a 1-D sequence of real numbers") from err
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (n,), got shape {arr.shape}")
    if finite and not np.isfinite(arr).all():
        raise ValueError(f"`{name}` contains NaN or inf; expected finite values")
    return arr


def check_method(method: str) -> None:
    """``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")


def correlate_rows(x: ArrayLike, y: ArrayLike, method: str = "pearson") -> np.ndarray:
    """Correlation of each row of ``x`` with the same row of ``y``, vectorised over rows.

    Args:
        x, y: ``(k, n)`` (or ``(n,)``) values, the same shape.
        method: ``"pearson"``, or ``"spearman"`` (Pearson of average ranks, as scipy).

    Returns:
        ``(k,)`` correlations in [-1, 1]; NaN for a row where ``x`` or ``y`` is constant.

    Example:
        >>> correlate_rows([[1, 2, 3], [1, 1, 1]], [[2, 4, 7], [1, 2, 3]]).round(4)
        array([0.9934,    nan])
        >>> correlate_rows([1, 2, 3, 4], [1, 4, 9, 100], method="spearman")
        array([1.])
    """
    check_method(method)
    xs, ys = np.atleast_2d(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    if xs.shape != ys.shape:
        raise ValueError(f"`x` and `y` must have the same shape, got {xs.shape} and {ys.shape}")
    # Exact constancy, checked before centring: round-off would turn it into a spurious ±1.
    constant = (np.ptp(xs, axis=1) == 0) | (np.ptp(ys, axis=1) == 0)
    if method == "spearman":
        xs, ys = sps.rankdata(xs, axis=1), sps.rankdata(ys, axis=1)
    xc, yc = xs - xs.mean(1, keepdims=True), ys - ys.mean(1, keepdims=True)
    denom = np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))
    r = (xc * yc).sum(1) / np.where(constant, 1.0, denom)
    return np.where(constant, _NAN, np.clip(r, -1.0, 1.0))


def spearman_brown(r: ArrayLike, factor: float = 2.0) -> np.ndarray | float:
    """Reliability of a measure ``factor`` times longer than one whose reliability is ``r``.

    ``factor · r / (1 + (factor − 1) · r)``; with ``factor=2`` it turns the correlation of two
    half-length measures into the reliability of the full length. Negative ``r`` stays negative.

    Example:
        >>> spearman_brown(0.5)
        0.6666666666666666
        >>> spearman_brown([0.0, 1.0])
        array([0., 1.])
    """
    r = np.asarray(r, dtype=np.float64)
    out = factor * r / (1.0 + (factor - 1.0) * r)
    return float(out) if out.ndim == 0 else out


def reliability_of_mean(var_true: float, var_error: float, n_items: float) -> float:
    """Closed-form reliability of a domain mean over ``n_items`` items (classical test theory).

    With domain scores ``t_d ~ N(0, var_true)`` and items ``x_di = t_d + e_di``,
    ``e_di ~ N(0, var_error)``, the mean of ``n`` items has reliability
    ``var_true / (var_true + var_error / n)``: what :func:`split_half_reliability` estimates.
    Also the planning formula: how many items per domain a wanted reliability needs.

    Example:
        >>> reliability_of_mean(1.0, 4.0, 16)
        0.8
    """
    if var_true < 0 or var_error < 0 or n_items <= 0:
        raise ValueError("need `var_true` >= 0, `var_error` >= 0 and `n_items` > 0")
    total = var_true + var_error / n_items
    return var_true / total if total > 0 else _NAN


def _groups(labels: list[Hashable]) -> dict[Hashable, np.ndarray]:
    """``{domain: item indices}`` in order of first appearance."""
    index: dict[Hashable, list[int]] = {}
    for i, d in enumerate(labels):
        index.setdefault(d, []).append(i)
    return {d: np.asarray(ix) for d, ix in index.items()}


def _split_means(
    x: np.ndarray, w: np.ndarray, n_splits: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted means of the two halves of ``n_splits`` random splits of one domain's items."""
    n = len(x)
    order = rng.random((n_splits, n)).argsort(axis=1)  # (n_splits, n): a permutation per row
    in_a = np.zeros((n_splits, n), dtype=bool)
    np.put_along_axis(in_a, order[:, : n // 2], True, axis=1)  # half A: floor(n/2) items
    wx = w * x
    mean_a = (in_a * wx).sum(1) / (in_a * w).sum(1)
    mean_b = (~in_a * wx).sum(1) / (~in_a * w).sum(1)
    return mean_a, mean_b


def split_half_reliability(
    values: ArrayLike,
    domains: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    method: str = "pearson",
    n_splits: int = 200,
    seed: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Split-half reliability, Spearman–Brown corrected, of a per-domain vector of item means.

    Each split permutes every domain's items and takes the first ``floor(n_d / 2)`` as half A,
    the rest as half B; the per-domain (weighted) means of the halves are correlated across
    domains and corrected with ``2r / (1 + r)``. Items, not tokens, should be the unit: tokens
    of one item share its noise, so splitting tokens overstates reliability; give per-item
    means with ``weights`` = tokens per item instead (the half mean is then the token mean).
    Odd item counts make the halves unequal by one, which biases the estimate slightly down.

    Args:
        values: ``(n_items,)`` per-item values (e.g. per-item Δ loss or forecast contribution).
        domains: ``(n_items,)`` domain label of each item; ≥ 3 domains, each with ≥ 2 items.
        weights: ``(n_items,)`` positive weights (e.g. tokens per item); None: plain means.
        method: Correlation of the two halves, ``"pearson"`` or ``"spearman"``.
        n_splits: Random splits to average over.
        seed: Seed of the splits.
        transform: Applied to each half's per-domain vector before correlating (e.g.
            ``np.abs`` for the reliability of |Δ|); ``None``: the means themselves.

    Returns:
        ``reliability`` (mean over splits of the corrected correlation), ``std`` (its spread over
        splits: split-to-split variation, not a standard error), ``r_half`` (mean uncorrected
        half correlation), ``n_splits`` (splits with a defined correlation: a constant half
        vector has none), ``n_domains``, ``n_items``. ``reliability`` can be negative (no signal).

    Raises:
        ValueError: Mismatched lengths, fewer than 3 domains, or a domain with fewer than 2 items.

    Example:
        >>> x = [1.0, 1.2, 2.0, 2.2, 3.0, 3.2, 4.1, 3.9]
        >>> out = split_half_reliability(x, ["a", "a", "b", "b", "c", "c", "d", "d"])
        >>> round(out["reliability"], 3), out["n_domains"]
        (0.996, 4)
    """
    check_method(method)
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1:
        raise ValueError(f"`n_splits` must be a positive int, got {n_splits!r}")
    x = as_vector("values", values)
    labels = np.asarray(domains, dtype=object)
    w = np.ones_like(x) if weights is None else as_vector("weights", weights)
    if labels.shape != x.shape or w.shape != x.shape:
        raise ValueError(
            f"`values`, `domains` and `weights` must be 1-D of one length, got {x.shape}, "
            f"{labels.shape} and {w.shape}"
        )
    if (w <= 0).any():
        raise ValueError("`weights` must be positive (e.g. tokens per item)")
    groups = _groups(labels.tolist())
    if len(groups) < 3:
        raise ValueError(f"`domains` must name at least 3 domains to correlate, got {len(groups)}")
    if small := [d for d, ix in groups.items() if len(ix) < 2]:
        raise ValueError(f"every domain needs >= 2 items to split; `domains` {small} have 1")
    rng = np.random.default_rng(seed)
    halves = [_split_means(x[ix], w[ix], n_splits, rng) for ix in groups.values()]
    half_a = np.stack([a for a, _ in halves], axis=1)  # (n_splits, n_domains)
    half_b = np.stack([b for _, b in halves], axis=1)
    if transform is not None:
        half_a, half_b = transform(half_a), transform(half_b)
    r_half = correlate_rows(half_a, half_b, method)
    rel = np.asarray(spearman_brown(r_half))[np.isfinite(r_half)]
    n = len(rel)
    return {
        "reliability": float(rel.mean()) if n else _NAN,
        "std": float(rel.std(ddof=1)) if n > 1 else _NAN,
        "r_half": float(r_half[np.isfinite(r_half)].mean()) if n else _NAN,
        "n_splits": n,
        "n_domains": len(groups),
        "n_items": len(x),
    }


def noise_ceiling(rel_x: float, rel_y: float) -> float:
    """Highest correlation two vectors of reliabilities ``rel_x``, ``rel_y`` can show: √(rx·ry).

    A negative reliability (the split halves disagree: no detectable signal) counts as 0, so the
    ceiling is 0; NaN propagates (an undefined reliability gives an undefined ceiling).

    Example:
        >>> noise_ceiling(0.64, 0.25)
        0.4
        >>> noise_ceiling(-0.2, 0.9), noise_ceiling(float("nan"), 0.9)
        (0.0, nan)
    """
    rx, ry = float(rel_x), float(rel_y)
    if math.isnan(rx) or math.isnan(ry):
        return _NAN
    if rx > 1 or ry > 1:
        raise ValueError(f"reliabilities are at most 1, got `rel_x`={rx}, `rel_y`={ry}")
    return math.sqrt(max(rx, 0.0) * max(ry, 0.0))


def sign_accuracy(pred: ArrayLike, target: ArrayLike) -> float:
    """Fraction of domains where ``pred`` and ``target`` have the same sign.

    Domains where either is 0 or non-finite are left out. Undefined (NaN) when no domain is
    left or ``pred`` has one sign on all of them: a constant prediction scores the base rate of
    that sign in ``target``, which says nothing about the predictor.

    Args:
        pred: ``(n,)`` signed predictions.
        target: ``(n,)`` signed outcomes, same domains and orientation (flip one beforehand if
            a positive prediction means a negative outcome).

    Example:
        >>> sign_accuracy([1.0, -2.0, 0.5, -3.0], [0.1, -0.2, -0.3, -0.4])
        0.75
        >>> sign_accuracy([1.0, 2.0, 3.0], [1.0, -1.0, 1.0])
        nan
    """
    p, t = as_vector("pred", pred, finite=False), as_vector("target", target, finite=False)
    if p.shape != t.shape:
        raise ValueError(f"`pred` and `target` must have one length, got {len(p)} and {len(t)}")
    keep = np.isfinite(p) & np.isfinite(t) & (p != 0) & (t != 0)
    sp, st = np.sign(p[keep]), np.sign(t[keep])
    if len(np.unique(sp)) < 2:
        return _NAN
    return float(np.mean(sp == st))

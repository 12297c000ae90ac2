"""Per-domain statistics for the experiment report: realised deltas, correlations, baselines.

Plain floats, numpy arrays and dicts in and out. Degenerate but valid input (a constant column,
too few domains) gives NaN; malformed input raises ``ValueError``/``TypeError`` naming it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from sts_lightning.reliability import as_vector
from sts_lightning.reliability import sign_accuracy as same_sign_fraction

__all__ = ["correlations", "cross_task", "fit_line", "paired_delta", "partial_correlation"]
__all__ += ["sign_accuracy", "summarise"]

_NAN = float("nan")
PerDomain = Mapping[str, float]  # domain name -> value
# The metric's scalar outputs (sts_lightning.metric._KEYS), named here to keep torch lazy.
_CORR_KEYS = ("pearson", "pearson_p", "spearman", "spearman_p", "kendall", "kendall_p")
_CORR_KEYS += ("pearson_ci_low", "pearson_ci_high")


def _vectors(*, finite: bool = False, **named: Any) -> list[np.ndarray]:
    """Each argument as a float64 ``(n,)`` array, all of one length, or an error naming it."""
    out = []
    for name, x in named.items():
        out.append(as_vector(name, x, finite=finite))
    if len({len(a) for a in out}) > 1:
        lengths = {name: len(a) for name, a in zip(named, out, strict=True)}
        raise ValueError(f"arguments must have the same length, got {lengths}")
    return out


def paired_delta(before: ArrayLike, after: ArrayLike, counts: ArrayLike) -> tuple[float, float]:
    """Per-token mean change of NLL on the same items, with an item-clustered standard error.

    Tokens of one item are not independent, so the SE treats items as clusters: it is the
    delta-method SE of the ratio estimator Σd_i / Σc_i with d_i = after_i − before_i,
    ``se = sqrt(n/(n−1) · Σ e_i²) / Σ c_i`` where e_i = d_i − delta·c_i.

    Args:
        before: Summed NLL per item before fine-tuning ``(n,)``.
        after: Summed NLL per item after fine-tuning ``(n,)``, same items and tokens.
        counts: Tokens per item ``(n,)``, non-negative with a positive sum.

    Returns:
        ``(delta, se)``; ``se`` is NaN for a single item.

    Example:
        >>> paired_delta([10.0, 20.0], [9.0, 18.0], [5, 10])
        (-0.2, 0.0)
        >>> paired_delta([10.0], [9.0], [4])
        (-0.25, nan)
    """
    b, a, c = _vectors(before=before, after=after, counts=counts, finite=True)
    if (n := len(c)) == 0:
        raise ValueError("`before`, `after` and `counts` must hold at least one item, got 0")
    if (c < 0).any() or c.sum() <= 0:
        raise ValueError("`counts` must be non-negative token counts with a positive sum")
    d, total = a - b, c.sum()
    delta = d.sum() / total
    if n < 2:
        return float(delta), _NAN
    e = d - delta * c
    return float(delta), float(math.sqrt(n / (n - 1) * np.dot(e, e)) / total)


def _residual(v: np.ndarray, design: np.ndarray) -> np.ndarray | None:
    """Least-squares residual of ``v`` on ``design``; None when nothing is left (v ∈ span)."""
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    res = v - design @ coef
    scale = np.linalg.norm(v - v.mean())
    # Relative tolerance: an exact linear function of z leaves round-off, not a signal.
    return None if scale == 0 or np.linalg.norm(res) <= 1e-10 * scale else res


def partial_correlation(
    x: ArrayLike, y: ArrayLike, z: ArrayLike, method: str = "pearson"
) -> tuple[float, float]:
    """Correlation of ``x`` and ``y`` controlling for ``z``, with its two-sided p-value.

    ``x`` and ``y`` are residualised on ``[1, z]`` by least squares (ranks first for Spearman)
    and the residuals correlated; the p-value uses Student's t with n − 3 degrees of freedom.

    Args:
        x, y: ``(n,)`` finite values, n ≥ 4.
        z: ``(n,)`` finite values of the control variable.
        method: ``"pearson"`` or ``"spearman"``.

    Returns:
        ``(r, p)``; both NaN when ``x`` or ``y`` is fully explained by ``z`` (or constant).

    Example:
        >>> r, p = partial_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 6], [0, 0, 1, 1, 1])
        >>> round(r, 4), round(p, 4)
        (0.4174, 0.5826)
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"`method` must be 'pearson' or 'spearman', got {method!r}")
    xs, ys, zs = _vectors(x=x, y=y, z=z, finite=True)
    if (n := len(xs)) < 4:
        raise ValueError(f"partial correlation needs n >= 4 observations, got n={n}")
    if method == "spearman":
        xs, ys, zs = (sps.rankdata(v) for v in (xs, ys, zs))
    design = np.column_stack([np.ones(n), zs])  # (n, 2)
    rx, ry = _residual(xs, design), _residual(ys, design)
    if rx is None or ry is None:
        return _NAN, _NAN
    rx, ry = rx - rx.mean(), ry - ry.mean()
    r = float(np.clip(np.dot(rx, ry) / (np.linalg.norm(rx) * np.linalg.norm(ry)), -1.0, 1.0))
    t = abs(r) * math.sqrt((n - 3) / (1.0 - r * r)) if abs(r) < 1.0 else math.inf
    return r, float(2.0 * sps.t.sf(t, n - 3))


def correlations(
    predicted: ArrayLike,
    realised: ArrayLike,
    *,
    absolute: bool = True,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Correlations of per-domain predictions with realised deltas, via the project's metric.

    Domains where either value is NaN or inf are dropped (pairwise) and counted.

    Args:
        predicted, realised: Per-domain scores and realised deltas ``(n,)`` each.
        absolute, n_bootstrap, seed: As in ``TransferabilityCorrelation`` (``absolute``:
            correlate with ``|realised|``).

    Returns:
        Floats ``pearson``, ``spearman``, ``kendall``, their ``*_p``, ``pearson_ci_low``,
        ``pearson_ci_high`` (NaN when a column is constant or n < 3), ints ``n``, ``n_dropped``.
    """
    x, y = _vectors(predicted=predicted, realised=realised)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out: dict[str, Any] = dict.fromkeys(_CORR_KEYS, _NAN)
    out["n"], out["n_dropped"] = int(keep.sum()), int((~keep).sum())
    if len(x) < 3:  # the metric raises below 3 domains; here it is a valid "undefined"
        return out
    import torch  # only here: the rest of the module needs no torch

    from sts_lightning.metric import TransferabilityCorrelation

    metric = TransferabilityCorrelation(
        absolute=absolute, n_bootstrap=n_bootstrap, seed=seed, sync_on_compute=False
    )
    metric.update(torch.from_numpy(x), torch.from_numpy(y))
    with warnings.catch_warnings():
        # A constant column is reported as NaN; the metric's warning would only be noise here.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = metric.compute()
    out.update({k: float(result[k]) for k in _CORR_KEYS})
    return out


def _aligned(**mappings: Any) -> list[dict[str, float]]:
    """Each mapping domain → value as a float dict; all must have the first one's domains."""
    out: list[dict[str, float]] = []
    for name, m in mappings.items():
        if not isinstance(m, Mapping):
            raise TypeError(f"`{name}` must be a mapping domain -> float, got {type(m).__name__}")
        try:
            out.append({k: float(v) for k, v in m.items()})
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must map domain names to real numbers") from err
        if out[-1].keys() != out[0].keys():
            diff = sorted(set(out[-1]) ^ set(out[0]))
            first = next(iter(mappings))
            raise ValueError(f"`{name}` must have the same domains as `{first}`; differ: {diff}")
    return out


def cross_task(
    score_a: PerDomain, score_b: PerDomain, realised_a: PerDomain, realised_b: PerDomain
) -> dict[str, Any]:
    """Does the ratio of two tasks' scores predict the ratio of their realised changes?

    Per domain, x = log(score_a / score_b) and y = log(|realised_a| / |realised_b|): a per-domain
    factor common to both tasks (a domain that always moves a lot) cancels in each ratio.
    Domains with a score ≤ 0, a realised value of 0, or any non-finite value are excluded.

    Args:
        score_a, score_b: Domain → predicted score for fine-tuning task A, B.
        realised_a, realised_b: Domain → realised delta after fine-tuning on A, B; all four
            mappings must have the same domains.

    Returns:
        ``{"x": {domain: x}, "y": {domain: y}, "n_excluded": int, **correlations(x, y,
        absolute=False)}`` without ``n_dropped``; correlation keys NaN when < 3 domains remain.
    """
    sa, sb, ra, rb = _aligned(
        score_a=score_a, score_b=score_b, realised_a=realised_a, realised_b=realised_b
    )
    xs: dict[str, float] = {}
    ys: dict[str, float] = {}
    for dom in sa:
        vals = (sa[dom], sb[dom], ra[dom], rb[dom])
        if not all(math.isfinite(v) for v in vals) or min(vals[:2]) <= 0 or 0 in vals[2:]:
            continue
        xs[dom] = math.log(sa[dom] / sb[dom])
        ys[dom] = math.log(abs(ra[dom]) / abs(rb[dom]))
    corr = correlations(list(xs.values()), list(ys.values()), absolute=False)
    corr.pop("n_dropped")  # always 0: exclusions are counted in n_excluded
    return {"x": xs, "y": ys, "n_excluded": len(sa) - len(xs), **corr}


def sign_accuracy(
    signed_scores: ArrayLike | PerDomain, realised: ArrayLike | PerDomain
) -> dict[str, Any]:
    """How often the sign of the score predicts whether fine-tuning helps or hurts a domain.

    A positive score predicts help (realised loss delta < 0), a negative one harm (delta > 0).
    Domains where the score or the delta is 0 or non-finite are excluded.

    Args:
        signed_scores: Per-domain signed scores ``(n,)``, or a mapping domain → score.
        realised: Per-domain realised loss deltas ``(n,)``, or a mapping with the same domains.

    Returns:
        ``accuracy`` (share with sign(score) == sign(−delta); NaN if all scores share a sign),
        ``majority`` (share of the commonest realised sign: the baseline), ``n``; NaN if n = 0.

    Example:
        >>> sign_accuracy([1.0, -2.0, 0.5, 3.0], [-0.1, 0.2, 0.3, -0.4])
        {'accuracy': 0.75, 'majority': 0.5, 'n': 4}
    """
    if isinstance(signed_scores, Mapping) or isinstance(realised, Mapping):
        s_map, r_map = _aligned(signed_scores=signed_scores, realised=realised)
        signed_scores, realised = list(s_map.values()), [r_map[k] for k in s_map]
    s, d = _vectors(signed_scores=signed_scores, realised=realised)
    keep = np.isfinite(s) & np.isfinite(d) & (s != 0) & (d != 0)
    s, d = s[keep], d[keep]
    if (n := len(s)) == 0:
        return {"accuracy": _NAN, "majority": _NAN, "n": 0}
    n_neg = int((d < 0).sum())  # a one-sign score is undefined: it only scores the base rate
    return {"accuracy": same_sign_fraction(s, -d), "majority": max(n_neg, n - n_neg) / n, "n": n}


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds/runs, ignoring NaNs.

    Args:
        values: ``(k,)`` values; NaNs are skipped in ``mean``/``std`` but kept in ``values``.

    Returns:
        ``{"mean", "std" (ddof=1; NaN if n < 2), "values": list, "n": count of non-NaNs}``.

    Example:
        >>> summarise([1.0, 3.0, float("nan")])
        {'mean': 2.0, 'std': 1.4142135623730951, 'values': [1.0, 3.0, nan], 'n': 2}
    """
    (v,) = _vectors(values=values)
    ok = v[~np.isnan(v)]
    n = len(ok)
    mean = float(ok.mean()) if n else _NAN  # np.nanmean warns on an empty slice
    std = float(ok.std(ddof=1)) if n >= 2 else _NAN
    return {"mean": mean, "std": std, "values": [float(x) for x in v], "n": n}


def fit_line(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    """Least-squares line through the finite ``(x, y)`` pairs, for scatter plots.

    Args:
        x, y: ``(n,)`` coordinates; pairs with a non-finite value are skipped.

    Returns:
        ``(slope, intercept)``; both NaN with fewer than 2 points or a constant ``x``.

    Example:
        >>> fit_line([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
        (2.0, 1.0)
        >>> fit_line([1.0, 1.0], [0.0, 2.0])
        (nan, nan)
    """
    xs, ys = _vectors(x=x, y=y)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if len(xs) < 2 or np.ptp(xs) == 0:
        return _NAN, _NAN
    xc = xs - xs.mean()
    slope = float(np.dot(xc, ys - ys.mean()) / np.dot(xc, xc))
    return slope, float(ys.mean() - slope * xs.mean())

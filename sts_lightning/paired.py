"""Is predictor A closer to the target than predictor B? Two dependent correlations compared.

``r(a, t)`` and ``r(b, t)`` share the target ``t`` and ``a`` usually correlates with ``b``, so two
intervals side by side say little about their difference. Williams' t and Steiger's Z test it from
the three correlations (Steiger 1980, Psychological Bulletin 87:245); :func:`paired_bootstrap_diff`
bootstraps it from the data, resampling the domains, the items inside each domain, or both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps

from sts_lightning.reliability import as_vector, check_method, correlate_rows

__all__ = ["DomainItems", "paired_bootstrap_diff", "steiger_z", "williams_test"]

# resample= → (draw domains with replacement, draw each domain's items with replacement)
_RESAMPLE = {"domains+items": (True, True), "domains": (True, False), "items": (False, True)}
_CHUNK = 256  # resamples per block: bounds memory at _CHUNK × items of the largest domain


def _checked(r_jk: float, r_jh: float, r_kh: float, n: int) -> float:
    """Validate the three correlations and ``n``; return the determinant of their matrix."""
    for name, r in (("r_jk", r_jk), ("r_jh", r_jh), ("r_kh", r_kh)):
        if not -1.0 <= r <= 1.0:  # False for NaN too
            raise ValueError(f"`{name}` must be a correlation in [-1, 1], got {r!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 4:
        raise ValueError(f"`n` must be an int >= 4 (the tests have n - 3 df), got {n!r}")
    det = 1 - r_jk**2 - r_jh**2 - r_kh**2 + 2 * r_jk * r_jh * r_kh
    if det < -1e-12:
        raise ValueError("`r_jk`, `r_jh`, `r_kh` do not form a valid correlation matrix")
    return max(det, 0.0)


def williams_test(r_jk: float, r_jh: float, r_kh: float, n: int) -> tuple[float, float]:
    """Williams' t for H0: ρ_jk = ρ_jh, two correlations sharing variable j (one sample).

    The "standard Williams' t" recommended by Steiger (1980, formula 7):
    ``t = (r_jk − r_jh) · sqrt((n−1)(1+r_kh) / (2·(n−1)/(n−3)·|R| + r̄²(1−r_kh)³))`` with
    ``|R|`` the determinant of the 3 × 3 correlation matrix and ``r̄ = (r_jk + r_jh)/2``,
    referred to Student's t with n − 3 df. For predictors: j = target, k = A, h = B. Derived
    for Pearson correlations of normal data; with Spearman's it is an approximation.

    Args:
        r_jk: Correlation of the target with predictor A.
        r_jh: Correlation of the target with predictor B.
        r_kh: Correlation of A with B.
        n: Observations (domains) behind all three, ≥ 4.

    Returns:
        ``(t, p)``, ``p`` two-sided; ``t`` > 0 when A correlates more with the target.

    Example:
        >>> t, p = williams_test(0.3, 0.4, 0.5, 100)
        >>> round(t, 4), round(p, 4)
        (-1.0767, 0.2843)
    """
    det = _checked(r_jk, r_jh, r_kh, n)
    r_bar = (r_jk + r_jh) / 2
    denom = 2 * (n - 1) / (n - 3) * det + r_bar**2 * (1 - r_kh) ** 3
    if denom <= 0:  # a degenerate matrix (e.g. all three correlations ±1): no test
        return float("nan"), float("nan")
    t = (r_jk - r_jh) * math.sqrt((n - 1) * (1 + r_kh) / denom)
    return float(t), float(2 * sps.t.sf(abs(t), n - 3))


def steiger_z(r_jk: float, r_jh: float, r_kh: float, n: int) -> tuple[float, float]:
    """Steiger's (1980) Z for H0: ρ_jk = ρ_jh, with Fisher z and the pooled correlation.

    ``z = (atanh r_jk − atanh r_jh) · sqrt(n − 3) / sqrt(2 − 2c)``, where ``c`` is the
    asymptotic correlation of the two Fisher z's evaluated at the pooled ``r̄ = (r_jk + r_jh)/2``
    (Steiger 1980, formulas 10 and 14): ``c = (r_kh(1 − 2r̄²) − ½r̄²(1 − 2r̄² − r_kh²)) / (1 − r̄²)²``.

    Args:
        r_jk, r_jh, r_kh, n: As in :func:`williams_test`; ``|r_jk|, |r_jh| < 1``.

    Returns:
        ``(z, p)``, ``p`` two-sided from the standard normal.

    Example:
        >>> z, p = steiger_z(0.4, 0.5, 0.1, 103)
        >>> round(z, 4), round(p, 4)
        (-0.8887, 0.3742)
    """
    _checked(r_jk, r_jh, r_kh, n)
    if max(abs(r_jk), abs(r_jh)) >= 1:
        raise ValueError("`r_jk` and `r_jh` must be strictly inside (-1, 1) for Fisher's z")
    r2 = ((r_jk + r_jh) / 2) ** 2
    c = (r_kh * (1 - 2 * r2) - 0.5 * r2 * (1 - 2 * r2 - r_kh**2)) / (1 - r2) ** 2
    if c >= 1:  # the two correlations are the same quantity: no test
        return float("nan"), float("nan")
    z = (math.atanh(r_jk) - math.atanh(r_jh)) * math.sqrt(n - 3) / math.sqrt(2 - 2 * c)
    return float(z), float(2 * sps.norm.sf(abs(z)))


@dataclass(frozen=True, init=False)
class DomainItems:
    """Per-item values of each domain; the domain's value is their (weighted) mean.

    Give a target or a predictor this way to have its items resampled inside each domain.
    """

    values: tuple[np.ndarray, ...]
    """Per domain, ``(n_d,)`` finite item values (n_d ≥ 1)."""
    weights: tuple[np.ndarray, ...]
    """Per domain, ``(n_d,)`` positive weights (e.g. tokens per item); all 1 when not given."""

    def __init__(self, values: Sequence[ArrayLike], weights: Sequence[ArrayLike] | None = None):
        vals = tuple(as_vector(f"values[{d}]", v) for d, v in enumerate(values))
        if weights is None:
            ws = tuple(np.ones_like(v) for v in vals)
        else:
            ws = tuple(as_vector(f"weights[{d}]", w) for d, w in enumerate(weights))
        if len(ws) != len(vals) or any(v.shape != w.shape for v, w in zip(vals, ws, strict=True)):
            raise ValueError("`weights` must hold one array per domain, shaped like `values`")
        if empty := [d for d, v in enumerate(vals) if len(v) == 0]:
            raise ValueError(f"every domain needs >= 1 item; `values` {empty} are empty")
        if any((w <= 0).any() for w in ws):
            raise ValueError("`weights` must be positive (e.g. tokens per item)")
        object.__setattr__(self, "values", vals)
        object.__setattr__(self, "weights", ws)

    def means(self) -> np.ndarray:
        """``(n_domains,)`` weighted mean of each domain's items."""
        return np.array(
            [np.dot(w, v) / w.sum() for v, w in zip(self.values, self.weights, strict=True)]
        )


def _as_items(name: str, x: DomainItems | ArrayLike) -> DomainItems:
    """A fixed ``(n,)`` vector as one item per domain: resampling it leaves it unchanged."""
    return x if isinstance(x, DomainItems) else DomainItems(as_vector(name, x)[:, None])


def _resample(
    inputs: dict[str, DomainItems],
    n_boot: int,
    same_items: bool,
    rng: np.random.Generator,
    resample: str = "domains+items",
) -> dict[str, np.ndarray]:
    """``{name: (n_boot, n_domains)}`` resampled domain means of every input."""
    domains, items_too = _RESAMPLE[resample]
    n = len(inputs["target"].values)
    if domains:  # stage 1: domains with replacement
        chosen = rng.integers(n, size=(n_boot, n))
    else:  # every domain once, in its place
        chosen = np.broadcast_to(np.arange(n), (n_boot, n))
    means = {name: items.means() for name, items in inputs.items()}
    out = {name: np.empty((n_boot, n)) for name in inputs}
    for d in range(n):
        rows, cols = np.nonzero(chosen == d)  # every slot where domain d was drawn
        for start in range(0, len(rows), _CHUNK):
            slot = rows[start : start + _CHUNK], cols[start : start + _CHUNK]
            shared = None
            for name, items in inputs.items():
                v, w = items.values[d], items.weights[d]
                if len(v) == 1 or not items_too:  # a fixed value resamples to itself
                    out[name][slot] = means[name][d]
                    continue
                # Stage 2: this domain's items with replacement, afresh for every slot.
                idx = shared if same_items and shared is not None else None
                if idx is None:
                    idx = shared = rng.integers(len(v), size=(len(slot[0]), len(v)))
                out[name][slot] = (w[idx] * v[idx]).sum(1) / w[idx].sum(1)
    return out


def paired_bootstrap_diff(
    pred_a: DomainItems | ArrayLike,
    pred_b: DomainItems | ArrayLike,
    target: DomainItems | ArrayLike,
    *,
    method: str = "spearman",
    n_boot: int = 2000,
    level: float = 0.95,
    resample: str = "domains+items",
    same_items: bool = True,
    seed: int = 0,
    target_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Two-stage bootstrap of ``r(pred_a, target) − r(pred_b, target)`` over domains and items.

    Each resample draws the domains with replacement, then, for every drawn domain, its items
    with replacement, and recomputes each :class:`DomainItems` input's domain mean; a plain
    ``(n_domains,)`` vector stays fixed per domain. With ``same_items``, the
    :class:`DomainItems` inputs hold the same items (index i of a domain is one item, e.g. its
    Δ and its forecast contribution) and are drawn with the same indices.

    Which stages to use depends on what the result should generalise to. Domains drawn from a
    larger population: ``"domains"`` (their item noise is already in the spread of their
    means). These fixed domains measured with finite items: ``"items"``. ``"domains+items"``
    (the default) counts item noise twice: the interval is conservative, and when item noise
    is large against the spread across domains the resampled correlations shrink toward 0,
    which shifts the interval (check the point ``diff`` against it).

    Args:
        pred_a, pred_b: Per-domain scores ``(n_domains,)``, or :class:`DomainItems`.
        target: Per-domain outcome, usually :class:`DomainItems` (e.g. per-item Δ loss with
            token counts as weights), or a fixed ``(n_domains,)`` vector; n_domains ≥ 3.
        method: ``"spearman"`` or ``"pearson"``.
        n_boot: Resamples.
        level: Coverage of the percentile interval, in (0, 1).
        resample: ``"domains+items"``, ``"domains"`` or ``"items"``: the stages drawn.
        same_items: The :class:`DomainItems` inputs are the same items, drawn together;
            False draws each one's items independently (different item sets).
        seed: Seed of the resampling.
        target_transform: Applied to the target's domain means, observed and resampled,
            before correlating (``np.abs``: correlate with |Δ|).

    Returns:
        ``diff``, ``r_a``, ``r_b`` (on the full data), ``ci`` ``(low, high)``, ``p`` (two-sided:
        twice ``(k + 1) / (n_boot + 1)`` with k the resamples on the other side of 0 from
        ``diff`` (0 included), at most 1; 1 when ``diff`` is 0), ``n_boot`` (resamples with both
        correlations defined), ``level``; ``ci`` and ``p`` are NaN when none is defined.

    Example:
        >>> out = paired_bootstrap_diff([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [1, 2, 3, 4, 6])
        >>> round(out["diff"], 2), out["ci"][0] < out["diff"] < out["ci"][1]
        (0.2, True)
    """
    check_method(method)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"`n_boot` must be a positive int, got {n_boot!r}")
    if resample not in _RESAMPLE:
        raise ValueError(f"`resample` must be one of {tuple(_RESAMPLE)}, got {resample!r}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}")
    raw = {"pred_a": pred_a, "pred_b": pred_b, "target": target}
    inputs = {name: _as_items(name, x) for name, x in raw.items()}
    sizes = {name: len(items.values) for name, items in inputs.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"`pred_a`, `pred_b` and `target` must cover the same domains: {sizes}")
    if sizes["target"] < 3:
        raise ValueError(f"need at least 3 domains to correlate, got {sizes['target']}")
    per_item = {
        name: [len(v) for v in x.values] for name, x in raw.items() if isinstance(x, DomainItems)
    }
    if same_items and len({tuple(s) for s in per_item.values()}) > 1:
        raise ValueError(
            f"with `same_items=True` the per-item inputs {sorted(per_item)} must have the same "
            "items per domain; pass `same_items=False` if they are different items"
        )
    means = {name: items.means() for name, items in inputs.items()}
    boot = _resample(inputs, n_boot, same_items, np.random.default_rng(seed), resample)
    if target_transform is not None:
        means["target"], boot["target"] = (target_transform(means["target"]),
                                           target_transform(boot["target"]))  # fmt: skip
    r_a, r_b = (correlate_rows(means[p], means["target"], method)[0] for p in ("pred_a", "pred_b"))
    diffs = correlate_rows(boot["pred_a"], boot["target"], method)
    diffs = diffs - correlate_rows(boot["pred_b"], boot["target"], method)
    diffs = diffs[np.isfinite(diffs)]  # a resample with a constant column has no correlation
    diff = float(r_a - r_b)
    low = high = p = float("nan")
    if len(diffs) and math.isfinite(diff):
        low, high = (float(q) for q in np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2]))
        # Counting the observed data as one more resample keeps p above 0 (never "p = 0").
        beyond = int((diffs <= 0).sum() if diff > 0 else (diffs >= 0).sum())
        p = 1.0 if diff == 0 else min(1.0, 2 * (beyond + 1) / (len(diffs) + 1))
    out = {"diff": diff, "r_a": float(r_a), "r_b": float(r_b), "ci": (low, high), "p": p}
    return out | {"n_boot": len(diffs), "level": level}

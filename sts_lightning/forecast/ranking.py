"""Rank candidate training sets by the movement they forecast where it is wanted and where not.

The user names **target** domains (movement wanted) and **protected** domains (movement not
wanted). Each set s gets, in one STS mode (``act`` by default), the **ranking score**

    R_s = mean_{d ∈ target} STS_sd / m_d  −  mean_{d ∈ protected} STS_sd / m_d,

where ``m_d`` is the mean of the point STS of domain d over all candidate sets (so every domain
counts on the same, unit-free scale: 1 = an average set). Higher is better. With no target
domain the first term is 0; with no protected domain the second is.

**Uncertainty.** A seeded bootstrap over each set's training items (queries): resample the items
with replacement, recompute Δ and δ from their per-item sums (:class:`ItemSums`, kept by
:func:`~sts_lightning.forecast.compare.predict_many`), take D* = top-k, and score every domain
from its shared domain vectors — no forward pass. Each set's per-domain STS and R get a
percentile interval at ``level``; P(A beats B) is the fraction of paired draws (independent
streams per set) with R*_A > R*_B. Two neighbours in the ranking **cannot be told apart** when
that probability is below ``separation`` (default 0.95). D is a top-k selection, so a resample
seldom scores above the full set: the point estimate often sits at an end of its interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sts_lightning.config import at_least, positive_int
from sts_lightning.forecast.comparison import Comparison, ItemSums
from sts_lightning.forecast.modes import RANK_MODES, check_mode

__all__ = ["RANK_MODES", "Ranking", "bootstrap_scores", "rank_sets"]


def bootstrap_scores(
    items: ItemSums,
    domain_vectors: Mapping[str, Mapping[str, Tensor]],
    *,
    k: int,
    mode: str = "act",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Tensor:
    """Per-domain STS of ``n_bootstrap`` item resamples of one training set.

    Args:
        items: The set's per-item sums over ``C`` candidate latents (``C >= k``).
        domain_vectors: ``{domain: {mode: (d_sae,) vector}}`` (``act``: mean h, ``notebook``:
            mean h², ``icl``: in-domain Δ).
        k: Size of D.
        mode: One of :data:`RANK_MODES`.
        n_bootstrap: Resamples.
        seed: Seeds the resampling.

    Returns:
        ``(n_bootstrap, n_domains)`` float64, domains in ``domain_vectors``' order.
    """
    positive_int("n_bootstrap", n_bootstrap)
    scoring = check_mode("mode", mode, RANK_MODES)
    n_items, n_cand = items.sum_sq.shape
    if n_cand < k:
        raise ValueError(f"`k`={k} exceeds the {n_cand} candidate latents kept per item")
    missing = [d for d, v in domain_vectors.items() if mode not in v]
    if missing:
        raise ValueError(f"`mode`={mode!r} is not available for domains {missing}")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_items, (n_bootstrap, n_items), generator=gen)
    weights = torch.zeros(n_bootstrap, n_items, dtype=torch.float64)
    weights.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    delta = (weights @ items.sum_sq) / (weights @ items.n_rows)[:, None]  # (B, C)
    top = torch.topk(delta, k, dim=1).indices  # (B, k), positions among the candidates
    vectors = torch.stack([v[mode][items.candidates].double() for v in domain_vectors.values()])
    picked = vectors[:, top]  # (n_domains, B, k)
    scores = scoring.combine(picked)
    return scores.T.contiguous()


@dataclass
class Ranking:
    """Candidate sets ranked by :func:`rank_sets` (see the module docstring for the score)."""

    order: list[str]
    """Set names, best first."""
    score: dict[str, tuple[float, float, float]]
    """``{set: (R, low, high)}``: the ranking score and its bootstrap interval."""
    domains: dict[str, dict[str, tuple[float, float, float]]]
    """``{set: {domain: (STS, low, high)}}`` in ``mode``."""
    p_beats: dict[str, dict[str, float]]
    """``{a: {b: P(R*_a > R*_b)}}`` over paired bootstrap draws."""
    target: list[str]
    """Domains whose movement is wanted."""
    protected: list[str]
    """Domains whose movement is not wanted."""
    mode: str = "act"
    """The STS mode ranked on."""
    level: float = 0.9
    """Coverage of the percentile intervals."""
    separation: float = 0.95
    """P(better beats worse) needed to tell two neighbours apart."""
    n_bootstrap: int = 1000
    """Bootstrap resamples per set."""
    seed: int = 0
    """Seed of the resampling."""
    scale: dict[str, float] = field(default_factory=dict)
    """``{domain: m_d}``: the mean point STS over sets each domain is divided by."""

    def ties(self) -> list[tuple[str, str, float]]:
        """``(better, worse, P)`` of every pair of neighbours that cannot be told apart."""
        pairs = zip(self.order, self.order[1:], strict=False)
        return [
            (a, b, self.p_beats[a][b]) for a, b in pairs if self.p_beats[a][b] < self.separation
        ]

    def to_dict(self) -> dict:
        """JSON-ready fields (tuples as lists)."""
        from dataclasses import asdict

        return asdict(self) | {"ties": [list(t) for t in self.ties()]}

    def table(self) -> str:
        """Sets side by side: rank, R [interval], per-domain STS [interval], P(beats next)."""
        doms = list(next(iter(self.domains.values())))
        role = {d: "+" if d in self.target else "-" if d in self.protected else "" for d in doms}
        rows = [["rank", "set", f"R [{self.level:.0%} CI]", *(role[d] + d for d in doms)]]
        rows[0].append("P(beats next)")
        for i, name in enumerate(self.order):
            p = ""
            if i + 1 < len(self.order):
                p_next = self.p_beats[name][self.order[i + 1]]
                p = f"{p_next:.2f}" + (" (tie)" if p_next < self.separation else "")
            cells = [_interval(*self.domains[name][d]) for d in doms]
            rows.append([str(i + 1), name, _interval(*self.score[name]), *cells, p])
        widths = [max(len(r[j]) for r in rows) + 2 for j in range(len(rows[0]))]
        lines = ["".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "-" * sum(widths))
        lines.append(
            f"R = mean(+target STS / m_d) - mean(-protected STS / m_d), mode {self.mode}, "
            f"{self.n_bootstrap} bootstrap resamples of the training items (seed {self.seed}); "
            f"tie: P(beats next) < {self.separation}"
        )
        return "\n".join(lines)


def _interval(point: float, low: float, high: float) -> str:
    return f"{point:.4g} [{low:.4g}, {high:.4g}]"


def _check_roles(domains: Sequence[str], target: Sequence[str], protected: Sequence[str]) -> None:
    for role, names in (("target", target), ("protected", protected)):
        unknown = [d for d in names if d not in domains]
        if unknown:
            raise ValueError(f"`{role}` names {unknown}, not among the domains {list(domains)}")
    both = set(target) & set(protected)
    if both:
        raise ValueError(f"`target` and `protected` both name {sorted(both)}")
    if not target and not protected:
        raise ValueError("name at least one `target` or `protected` domain to rank the sets")


def _points_and_draws(
    comparison: Comparison, mode: str, n_bootstrap: int, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per set: point STS ``(n_domains,)`` and bootstrap draws ``(n_bootstrap, n_domains)``."""
    if any(mode not in v for v in comparison.domain_vectors.values()):
        raise ValueError(f"`mode`={mode!r} needs in-domain demonstrations (`domain_demos` > 0)")
    points, draws = {}, {}
    for i, (name, pred) in enumerate(comparison.predictions.items()):
        values = [getattr(pred.domains[d], mode) for d in comparison.domains]
        points[name] = torch.tensor(values, dtype=torch.float64)
        draws[name] = bootstrap_scores(
            comparison.items[name],
            comparison.domain_vectors,
            k=len(pred.top_latents),
            mode=mode,
            n_bootstrap=n_bootstrap,
            seed=seed + i,
        )
    return points, draws


def rank_sets(
    comparison: Comparison,
    target: Sequence[str] = (),
    protected: Sequence[str] = (),
    *,
    mode: str = "act",
    n_bootstrap: int = 1000,
    level: float = 0.9,
    separation: float = 0.95,
    seed: int = 0,
) -> Ranking:
    """Rank the sets of ``comparison`` by R (module docstring), with bootstrap intervals.

    Args:
        comparison: From :func:`~sts_lightning.forecast.compare.predict_many`.
        target: Domains whose movement is wanted.
        protected: Domains whose movement is not wanted.
        mode: One of :data:`RANK_MODES`.
        n_bootstrap: Resamples per set.
        level: Coverage of the intervals, in (0, 1).
        separation: P(A beats B) needed to tell neighbours apart, in (0.5, 1).
        seed: Seed of the resampling (set i uses ``seed + i``).

    Raises:
        ValueError: A target or protected domain not among the domains (named), a domain in
            both, neither given, or a bad ``mode``/``level``/``separation``.
    """
    _check_roles(comparison.domains, list(target), list(protected))
    at_least("level", level, 0, strict=True)
    at_least("separation", separation, 0.5, strict=True)
    if level >= 1 or separation >= 1:
        raise ValueError(f"`level` and `separation` must be < 1, got {level}, {separation}")
    check_mode("mode", mode, RANK_MODES)
    doms = comparison.domains
    points, draws = _points_and_draws(comparison, mode, n_bootstrap, seed)
    scale = torch.stack(list(points.values())).mean(0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    sign = [(d in target) / max(len(target), 1) for d in doms]
    sign = [w - (d in protected) / max(len(protected), 1) for w, d in zip(sign, doms, strict=True)]
    weight = torch.tensor(sign, dtype=torch.float64) / scale  # R = STS @ weight
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    r_draws = {s: x @ weight for s, x in draws.items()}
    score = {s: (float(points[s] @ weight), *map(float, r_draws[s].quantile(q))) for s in points}
    per_domain = {
        s: {
            d: (float(points[s][j]), *map(float, draws[s][:, j].quantile(q)))
            for j, d in enumerate(doms)
        }
        for s in points
    }
    p_beats = {
        a: {b: float((r_draws[a] > r_draws[b]).double().mean()) for b in points} for a in points
    }
    order = sorted(points, key=lambda s: -score[s][0])
    return Ranking(
        order,
        score,
        per_domain,
        p_beats,
        list(target),
        list(protected),
        mode=mode,
        level=level,
        separation=separation,
        n_bootstrap=n_bootstrap,
        seed=seed,
        scale=dict(zip(doms, map(float, scale), strict=True)),
    )

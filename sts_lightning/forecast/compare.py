"""Which training set? :func:`predict_many` forecasts several named training sets in one run.

The domain side (each domain's latent moments and, with in-domain demonstrations, its ICL shift)
does not depend on the training data, so it is computed **once** and shared; only the task side
(:func:`~sts_lightning.forecast.predict.task_statistics`) runs per set. Every pass goes through
**one** :class:`~sts_lightning.forecast.engine.Extractor`, hence one massive-activation threshold,
exactly like :func:`~sts_lightning.forecast.predict.predict`.

**The threshold, and what "equals N single runs" means.** With ``config.max_norm`` given (every
recipe gives 500), each set's :class:`Prediction` equals ``predict(…, that_set, …)`` exactly: Δ,
δ, D and every :class:`DomainScore` field. With ``max_norm=None``, ``predict`` fixes the threshold
from the first batch of *its* training pass, so single runs on different sets would use different
thresholds and could not share domain statistics. Here the threshold is fixed by the first
batch of the **first** set (the passes run in the order given, first set before the domains, as
in ``predict``): the first set equals its single run exactly, and every set equals a single run
with ``max_norm=comparison.max_norm``.

For the ranking's uncertainty (:mod:`sts_lightning.forecast.ranking`) the task pass also keeps,
per training query (item), the sums over its kept rows of (icl − base) and (icl − base)² for the
``n_candidates`` latents of largest Δ: a bootstrap over items then needs no further forward.
During the pass these sums cover every latent, float64: memory 16 × n_items × d_sae bytes per
set (12 MB for 170 queries at d_sae 4,608; lower ``train_tokens`` for very wide SAEs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sts_lightning.data.prompts import Example
from sts_lightning.forecast.comparison import Comparison, ItemSums
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.engine import Extractor, Statistics, check_examples
from sts_lightning.forecast.modes import MODES, RANK_MODES
from sts_lightning.forecast.predict import (
    assemble_prediction,
    checked_inputs,
    domain_statistics,
    task_statistics,
    warn_if_short,
)
from sts_lightning.model.sae import encode

__all__ = ["check_train_sets", "predict_many"]

log = logging.getLogger(__name__)


def check_train_sets(train_sets: Any, n_demos: int) -> dict[str, list[Example]]:
    """``train_sets`` as ``{name: examples}`` after checking names and contents.

    Args:
        train_sets: A mapping ``{name: examples}`` or a sequence of ``(name, examples)`` pairs.
        n_demos: Demonstrations per query (each set needs ``n_demos + 1`` examples).

    Raises:
        ValueError: No set, a duplicate or empty name, or a set too small (named).
        TypeError: A set that is not a sequence of ``Example`` (named).
    """
    pairs = list(train_sets.items()) if isinstance(train_sets, Mapping) else train_sets
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError("`train_sets` must be a non-empty mapping {name: examples}")
    out: dict[str, list[Example]] = {}
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"`train_sets` items must be (name, examples) pairs, got {pair!r}")
        name, examples = pair
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"`train_sets` names must be non-empty strings, got {name!r}")
        if name in out:
            raise ValueError(f"`train_sets` names the set {name!r} twice")
        if isinstance(examples, Sequence) and not isinstance(examples, str) and not examples:
            raise ValueError(f"`train_sets[{name!r}]` is empty")
        out[name] = check_examples(f"train_sets[{name!r}]", examples, n_demos)
    return out


@dataclass
class _ItemStatistics(Statistics):
    """The task statistics plus per-item sums over every latent (filled during the pass)."""

    d_sae: int = 0
    """Latents of the SAE."""
    item_sq: Tensor | None = None
    """``(n_items, d_sae)`` float64: Σ (icl − base)² per item."""
    item_sum: Tensor | None = None
    """``(n_items, d_sae)`` float64: Σ (icl − base) per item."""
    item_rows: Tensor | None = None
    """``(n_items,)``: kept rows per item."""

    def begin(self, n_items: int) -> None:
        self.item_sq = torch.zeros(n_items, self.d_sae, dtype=torch.float64)
        self.item_sum, self.item_rows = torch.zeros_like(self.item_sq), torch.zeros(n_items)

    def update(self, sae, base: Tensor, icl: Tensor | None, items: Tensor | None = None) -> None:
        super().update(sae, base, icl)
        diff = encode(sae, icl).double() - encode(sae, base).double()  # (n, d_sae)
        device = diff.device  # where the SAE runs: the sums stay beside it
        self.item_sq, self.item_sum = self.item_sq.to(device), self.item_sum.to(device)
        self.item_sq.index_add_(0, items.to(device), diff.square())
        self.item_sum.index_add_(0, items.to(device), diff)
        self.item_rows.index_add_(0, items.cpu(), torch.ones(len(items)))


def _item_sums(stats: _ItemStatistics, n_candidates: int) -> ItemSums:
    """The candidates' per-item sums of a finished task pass (items without rows dropped)."""
    delta = stats.shift.feature_shift()
    candidates = torch.topk(delta.float(), min(n_candidates, delta.numel())).indices
    has_rows = stats.item_rows > 0
    return ItemSums(
        candidates=candidates.cpu(),
        sum_sq=stats.item_sq[:, candidates].cpu()[has_rows],
        sum=stats.item_sum[:, candidates].cpu()[has_rows],
        n_rows=stats.item_rows[has_rows].double(),
    )


def _domain_vectors(stats: Statistics) -> dict[str, Tensor]:
    """``{mode: (d_sae,) vector}`` of every rankable mode the domain's statistics support."""
    moments = stats.moments.compute()
    shift = None if stats.shift is None else stats.shift.feature_shift()
    vectors = {name: MODES[name].domain_vector(moments, shift) for name in RANK_MODES}
    return {name: v.cpu() for name, v in vectors.items() if v is not None}


def predict_many(
    model: torch.nn.Module,
    tokenizer,
    sae,
    train_sets: Mapping[str, Sequence[Example]] | Sequence[tuple[str, Sequence[Example]]],
    domains: Mapping[str, Sequence[Example]],
    config: PredictConfig | None = None,
    *,
    n_candidates: int = 1000,
    meta: Mapping[str, Any] | None = None,
) -> Comparison:
    """Forecast every training set against the same domains; domain statistics computed once.

    Args:
        model: A Hugging Face causal LM, as for :func:`~sts_lightning.forecast.predict.predict`.
        tokenizer: Its tokenizer.
        sae: The SAE reading the residual stream after the layer.
        train_sets: ``{name: examples}`` (or ``(name, examples)`` pairs), at least one.
        domains: ``{name: examples}`` of the downstream domains to score.
        config: How to compute it (``max_norm`` given: each set equals its single ``predict``
            run exactly; see the module docstring for ``None``).
        n_candidates: Latents ``C`` (largest Δ first) whose per-item sums are kept for the
            bootstrap; at least ``config.k``.
        meta: Provenance stored in every prediction (``meta["train"]`` is set to the set name).

    Returns:
        A :class:`Comparison`: ``predictions[name]`` as ``predict`` would return it.

    Raises:
        ValueError: Duplicate or empty set names, a set too small, ``n_candidates < k``, or any
            error ``predict`` raises on the shared inputs.
    """
    cfg = config or PredictConfig()
    start = time.perf_counter()
    sets = check_train_sets(train_sets, cfg.n_demos)
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < cfg.k:
        raise ValueError(f"`n_candidates` must be an int >= `config.k`={cfg.k}, got {n_candidates}")
    first = next(iter(sets.values()))
    layer, _, domains = checked_inputs(model, sae, first, domains, cfg)
    extractor = Extractor(model, sae, tokenizer, layer, cfg)

    tasks, items, timings = {}, {}, {}
    for i, (name, examples) in enumerate(sets.items()):
        t0 = time.perf_counter()
        log.info("training set %d/%d: %r (%d examples)", i + 1, len(sets), name, len(examples))
        extra = _ItemStatistics(d_sae=extractor.d_sae)
        tasks[name] = task_statistics(extractor, examples, extra=extra, desc=name)
        items[name] = _item_sums(tasks[name], n_candidates)
        timings[f"set/{name}"] = time.perf_counter() - t0
        if i == 0:  # the domains after the first set: the threshold is fixed as in predict()
            t0, domain_stats = time.perf_counter(), {}
            for dname, dexamples in domains.items():
                domain_stats[dname] = domain_statistics(extractor, dname, dexamples)
                warn_if_short(dname, domain_stats[dname].n_selected, cfg.domain_tokens)
            timings["domains"] = time.perf_counter() - t0
    max_norm = float(extractor.max_norm)
    predictions = {
        name: assemble_prediction(
            task,
            domain_stats,
            **dict(layer=layer, k=cfg.k, max_norm=max_norm, config=cfg),
            timings={"train": timings[f"set/{name}"], "domains": timings["domains"]},
            meta=dict(meta or {}) | {"train": name},
        )
        for name, task in tasks.items()
    }
    timings["total"] = time.perf_counter() - start
    vectors = {name: _domain_vectors(stats) for name, stats in domain_stats.items()}
    return Comparison(predictions, items, vectors, max_norm, timings)

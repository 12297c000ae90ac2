"""The forecast before training: which latents will the training data shift, and who uses them.

:func:`predict` runs the paper's two steps on the engine (:mod:`sts_lightning.forecast.engine`),
in data order:

1. :func:`task_statistics`: training queries are encoded twice
   (:func:`~sts_lightning.data.prompts.build_pairs`), plain and after ``n_demos`` training
   demonstrations; the residual stream after layer L of the *same* tokens in both goes through
   the SAE into a :class:`~sts_lightning.stats.PairedShift` → Δ, δ and D = top-k(Δ).
2. :func:`domain_statistics`: each domain's tokens go through the same path into a
   :class:`~sts_lightning.stats.LatentMoments` (STS_act, notebook, signed) and, with in-domain
   demonstrations, a ``PairedShift`` (STS_ICL).

:func:`assemble_prediction` turns both into a :class:`Prediction`. Rows with massive activations
(a residual norm far above the median) are dropped from every statistic, in pairs, and counted.
The experiment (:mod:`sts_lightning.experiment.forecast`) runs the same steps with more
statistics filled from the same passes.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor

from sts_lightning import functional as F
from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.engine import LOCAL, Extractor, Statistics, check_examples
from sts_lightning.forecast.modes import MODES
from sts_lightning.forecast.prediction import DomainScore, Prediction
from sts_lightning.model.run_inputs import check_k, resolve_sae_layer
from sts_lightning.model.sae import ReconstructionQuality
from sts_lightning.stats import LatentMoments, PairedShift

__all__ = [
    "assemble_prediction",
    "checked_inputs",
    "domain_statistics",
    "paper_scores",
    "predict",
    "task_statistics",
    "warn_if_short",
]


def task_statistics(
    extractor: Extractor,
    examples: Sequence[Example],
    *,
    seed: int | None = None,
    extra: Statistics | None = None,
    desc: str = "train",
) -> Statistics:
    """The source task's side: Δ/δ (``shift``), SAE ``quality`` and ``counts``.

    Args:
        extractor: The engine (its config gives ``n_demos``, ``train_span``, ``train_tokens``).
        examples: The fine-tuning data.
        seed: Seed of the query and demonstration choice; ``None``: the config's.
        extra: More statistics to fill from the same passes (the experiment's baselines); its
            ``shift`` and ``quality`` are replaced.
        desc: Progress-bar label.

    Raises:
        ValueError: Too few examples, or every query row was dropped.
    """
    cfg = extractor.config
    examples = check_examples("train_examples", examples, cfg.n_demos)
    pairs, _ = extractor.select(examples, cfg.n_demos, cfg.train_span, cfg.train_tokens, seed=seed)
    stats = replace(
        extra or Statistics(),
        shift=PairedShift(extractor.d_sae, **LOCAL),
        quality=ReconstructionQuality(extractor.d_model, extractor.d_sae, **LOCAL),
    )
    counts = extractor.run(pairs, cfg.train_span, desc, stats)
    if counts["n_tokens"] == 0:
        raise ValueError(
            f"no training-query row is left: all {counts['n_dropped']} were dropped as non-finite "
            f"(NaN/inf) or massive activations (residual norm > `max_norm`={extractor.max_norm})"
        )
    stats.counts = counts | {"n_examples": len(pairs)}
    return stats


def domain_statistics(
    extractor: Extractor,
    name: str,
    examples: Sequence[Example],
    *,
    seed: int | None = None,
    extra: Statistics | None = None,
    tokens: int | None = None,
) -> Statistics:
    """One domain's side: latent ``moments``, ``shift`` (when ``domain_demos`` > 0), ``counts``.

    Args:
        extractor: The engine (its config gives ``domain_demos``, ``domain_span``,
            ``domain_tokens``).
        name: The domain's name (messages, progress bar).
        examples: The domain's examples.
        seed: Seed of the example and demonstration choice; ``None``: the config's.
        extra: More statistics to fill from the same passes; its ``moments`` and ``shift`` are
            replaced.
        tokens: Token budget; ``None``: the config's ``domain_tokens``.

    Raises:
        ValueError: Too few examples, or every row was dropped.
    """
    cfg = extractor.config
    examples = check_examples(f"domains[{name!r}]", examples, cfg.domain_demos)
    pairs, n_selected = extractor.select(
        examples, cfg.domain_demos, cfg.domain_span, tokens or cfg.domain_tokens, seed=seed
    )
    stats = replace(
        extra or Statistics(),
        moments=LatentMoments(extractor.d_sae, **LOCAL),
        shift=PairedShift(extractor.d_sae, **LOCAL) if cfg.domain_demos > 0 else None,
    )
    counts = extractor.run(pairs, cfg.domain_span, name, stats)
    if counts["n_tokens"] == 0:
        raise ValueError(f"domain {name!r} has no token rows left after masking")
    stats.counts, stats.n_selected = counts | {"n_examples": len(pairs)}, n_selected
    return stats


def paper_scores(domain: Statistics, top: Tensor, signed: Tensor) -> dict[str, float | None]:
    """One domain's score in every mode of :data:`~sts_lightning.forecast.modes.MODES`.

    Args:
        domain: From :func:`domain_statistics`.
        top: D ``(k,)``, the latents scored.
        signed: δ ``(d_sae,)``.

    Returns:
        ``{mode: score}``; ICL modes are ``None`` without in-domain demonstrations.
    """
    return {name: mode.score(domain, top, signed) for name, mode in MODES.items()}


def assemble_prediction(
    task: Statistics,
    domains: Mapping[str, Statistics],
    *,
    layer: int,
    k: int,
    max_norm: float,
    config: PredictConfig,
    timings: Mapping[str, float] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Prediction:
    """The :class:`Prediction` of a task's and domains' statistics, with D = top-``k``(Δ)."""
    delta, signed = task.shift.feature_shift().float(), task.shift.signed_shift().float()
    top = F.top_shifted(delta, k=k)
    scores = {
        name: DomainScore(**paper_scores(d, top, signed), budget=config.domain_tokens, **d.counts)
        for name, d in domains.items()
    }
    return Prediction(
        domains=scores,
        shift=delta,
        signed_shift=signed,
        top_latents=top,
        layer=layer,
        train=task.counts | {"budget": config.train_tokens},
        quality=task.sae_quality(),
        max_norm=max_norm,
        config=asdict(config),
        domain_means={n: d.moments.compute()["mean"].float() for n, d in domains.items()},
        timings=dict(timings or {}),
        meta=dict(meta or {}),
    )


def predict(
    model: torch.nn.Module,
    tokenizer,
    sae,
    train_examples: Sequence[Example],
    domains: Mapping[str, Sequence[Example]],
    config: PredictConfig | None = None,
    *,
    meta: dict[str, Any] | None = None,
) -> Prediction:
    """Forecast per-domain transferability of fine-tuning on ``train_examples``.

    Args:
        model: A Hugging Face causal LM (PEFT-wrapped is fine), in the dtype to run.
        tokenizer: Its tokenizer (with a chat template unless ``config.use_chat_template`` is
            False).
        sae: An SAE with ``encode``/``decode`` reading the residual stream after ``layer``
            (see :func:`~sts_lightning.model.sae.load_sae`).
        train_examples: The fine-tuning data as prompt/answer pairs.
        domains: ``{name: examples}`` of the downstream domains to score.
        config: How to compute it; defaults follow the paper.
        meta: Provenance stored with the result (model id, SAE id, data names).

    Returns:
        A :class:`~sts_lightning.forecast.prediction.Prediction`.
    """
    cfg = config or PredictConfig()
    start = time.perf_counter()
    layer, train_examples, domains = checked_inputs(model, sae, train_examples, domains, cfg)
    extractor = Extractor(model, sae, tokenizer, layer, cfg)

    task = task_statistics(extractor, train_examples)
    timings, stats = {"train": time.perf_counter() - start}, {}
    for name, examples in domains.items():
        t0 = time.perf_counter()
        stats[name] = domain_statistics(extractor, name, examples)
        warn_if_short(name, stats[name].n_selected, cfg.domain_tokens)
        timings[f"domain/{name}"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    max_norm = float(extractor.max_norm)
    kw = dict(layer=layer, k=cfg.k, max_norm=max_norm, config=cfg, timings=timings, meta=meta)
    return assemble_prediction(task, stats, **kw)


def checked_inputs(
    model, sae, train_examples, domains, cfg: PredictConfig
) -> tuple[int, list[Example], dict[str, list[Example]]]:
    """``(layer, train_examples, domains)`` once every input is checked, before any forward."""
    layer = resolve_sae_layer(model, sae, cfg.layer, "config")
    train_examples = check_examples("train_examples", train_examples, cfg.n_demos)
    if not isinstance(domains, Mapping) or not domains:
        raise ValueError("`domains` must be a non-empty mapping {name: examples}")
    domains = {
        n: check_examples(f"domains[{n!r}]", e, cfg.domain_demos) for n, e in domains.items()
    }
    check_k(cfg.k, sae, "config.k")
    return layer, train_examples, domains


def warn_if_short(name: str, n_tokens: int, budget: int) -> None:
    if n_tokens < budget:
        warnings.warn(
            f"domain {name!r} has {n_tokens} tokens, fewer than `domain_tokens`={budget}; "
            f"scoring it on {n_tokens}",
            stacklevel=3,  # predict's caller
        )

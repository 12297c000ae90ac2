"""Every forecast the experiment compares, from one set of forward passes per stage.

The paper's STS (:mod:`sts_lightning.forecast.predict`'s task and domain steps) plus what it is
judged against, filled from the same token rows (layer L residual stream, massive activations
dropped by the engine's one row filter):

- **domains** (once; independent of the source task): SAE latent moments and in-domain ICL
  shift (STS_act, notebook, signed, STS_ICL), and the same on the raw residual neurons;
- **source task** (per task and seed): the ICL shift Δ of the SAE latents and of the raw neurons,
  the shift caused by as many *unrelated* demonstrations (for the task-specific contrast
  Δ_task − Δ_unrelated), and the task's mean latent / residual vectors (similarity controls).

:func:`score_domains` turns these into one number per (domain, predictor).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sts_lightning import functional as F
from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.engine import LOCAL, Extractor, Statistics, check_examples
from sts_lightning.forecast.modes import MODES, contrast_modes
from sts_lightning.forecast.predict import (
    assemble_prediction,
    domain_statistics,
    paper_scores,
    task_statistics,
)
from sts_lightning.forecast.prediction import Prediction
from sts_lightning.stats import LatentMoments, PairedShift

__all__ = ["DomainStats", "Forecaster", "TaskForecast", "merge_statistics", "score_domains"]
__all__ += ["to_prediction"]

DomainStats = Statistics
"""A domain's statistics: ``moments``/``shift`` (SAE), ``raw_moments``/``raw_shift`` (residual
neurons; ``shift``s are ``None`` when ``domain_demos`` is 0) and ``counts``."""


@dataclass
class TaskForecast:
    """Statistics of one source task's queries, for one seed of demonstrations."""

    stats: Statistics
    """From the task pass: ``shift`` (the paper's Δ), ``raw_shift``, ``moments`` and
    ``raw_moments`` of the plain queries (similarity controls), ``quality`` and ``counts``."""
    contrast: PairedShift | None
    """SAE shift under as many unrelated demonstrations; ``None`` without a contrast pool."""


class Forecaster:
    """Runs the forecast passes with one massive-activation threshold for all of them.

    Args:
        model: The base causal LM.
        tokenizer: Its tokenizer.
        sae: The SAE reading ``layer``.
        layer: Decoder layer read.
        config: Budgets, demonstrations and spans (``seed`` is overridden per call).
    """

    def __init__(self, model, tokenizer, sae, layer: int, config: PredictConfig) -> None:
        self.config = config
        self.extractor = Extractor(model, sae, tokenizer, layer, config)

    def release_model(self) -> None:
        """Drop the reference to the base model once every forecast is made (the fine-tunes
        load their own copies): its memory goes back before the first fine-tune."""
        self.extractor.model = None

    @property
    def sae(self):
        """The SAE read."""
        return self.extractor.sae

    @property
    def layer(self) -> int:
        """The decoder layer read."""
        return self.extractor.layer

    @property
    def max_norm(self) -> float | None:
        """The massive-activation threshold every pass uses (set by the first batch)."""
        return self.extractor.max_norm

    def domains(
        self, domains: Mapping[str, Sequence[Example]], seed: int, tokens: int | None = None
    ) -> dict[str, DomainStats]:
        """Statistics of each domain's scored tokens (budget ``tokens``, by default the
        config's ``domain_tokens``, each)."""
        d_model, paired = self.extractor.d_model, self.config.domain_demos > 0
        return {
            name: domain_statistics(
                self.extractor,
                name,
                examples,
                seed=seed,
                tokens=tokens,
                extra=Statistics(
                    raw_moments=LatentMoments(d_model, **LOCAL),
                    raw_shift=PairedShift(d_model, **LOCAL) if paired else None,
                ),
            )
            for name, examples in domains.items()
        }

    def domain_halves(
        self, domains: Mapping[str, Sequence[Example]], seed: int
    ) -> tuple[
        dict[str, DomainStats], dict[str, DomainStats] | None, dict[str, DomainStats] | None
    ]:
        """``(full, half_a, half_b)``: each domain's statistics on two disjoint halves of its
        examples (even and odd positions, half the token budget each) and their merge.

        The halves give every forecast's split-half reliability at no extra cost: the merge is
        one pass over the same budget. ``(full, None, None)`` when a domain has too few examples
        to halve (each half needs ``domain_demos + 1``); ``full`` is then :meth:`domains`'.
        """
        need = 2 * (self.config.domain_demos + 1)
        if any(len(examples) < need for examples in domains.values()):
            return self.domains(domains, seed), None, None
        tokens = max(1, self.config.domain_tokens // 2)
        halves = [
            self.domains({n: list(ex)[start::2] for n, ex in domains.items()}, seed, tokens)
            for start in (0, 1)
        ]
        full = {n: merge_statistics(halves[0][n], halves[1][n]) for n in domains}
        return full, halves[0], halves[1]

    def task(
        self,
        examples: Sequence[Example],
        seed: int,
        contrast_pool: Sequence[Example] | None = None,
        desc: str = "task",
    ) -> TaskForecast:
        """Task-side statistics; ``contrast_pool`` adds the unrelated-demonstration pass."""
        cfg, d_sae, d_model = self.config, self.extractor.d_sae, self.extractor.d_model
        examples = check_examples("train_examples", examples, cfg.n_demos)
        extra = Statistics(
            moments=LatentMoments(d_sae, **LOCAL),
            raw_moments=LatentMoments(d_model, **LOCAL),
            raw_shift=PairedShift(d_model, **LOCAL),
        )
        stats = task_statistics(self.extractor, examples, seed=seed, extra=extra, desc=desc)
        if contrast_pool is None:
            return TaskForecast(stats, None)
        contrast_pool = check_examples("contrast_pool", contrast_pool, cfg.n_demos)
        # Same queries (they depend on the seed and budget only), other demonstrations.
        pairs, _ = self.extractor.select(
            examples,
            cfg.n_demos,
            cfg.train_span,
            cfg.train_tokens,
            seed=seed,
            demo_pool=contrast_pool,
        )
        contrast = Statistics(shift=PairedShift(d_sae, **LOCAL))
        self.extractor.run(pairs, cfg.train_span, f"{desc} (unrelated)", contrast)
        return TaskForecast(stats, contrast.shift)


def merge_statistics(a: Statistics, b: Statistics) -> Statistics:
    """The statistics of ``a``'s and ``b``'s rows together (a new object; both are kept).

    Every field is a sum over rows, so merging equals one pass over both sets of rows.
    """
    out = copy.deepcopy(a)
    for name in ("moments", "shift", "quality", "raw_moments", "raw_shift"):
        mine, theirs = getattr(out, name), getattr(b, name)
        if (mine is None) != (theirs is None):
            raise ValueError(f"cannot merge statistics: only one side has `{name}`")
        if mine is not None:
            mine.merge_state(theirs)
    out.counts = {k: a.counts.get(k, 0) + b.counts.get(k, 0) for k in a.counts | b.counts}
    out.n_selected = a.n_selected + b.n_selected
    return out


def _cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def contrast_shift(task: TaskForecast) -> Tensor | None:
    """Δ_task − Δ_unrelated ``(d_sae,)``: the part of the ICL shift the task's content causes."""
    if task.contrast is None:
        return None
    return (task.stats.shift.feature_shift() - task.contrast.feature_shift()).float()


def score_domains(
    domains: Mapping[str, DomainStats], task: TaskForecast, k: int, raw_k: int
) -> dict[str, dict[str, float]]:
    """``{domain: {predictor: value}}`` for every forecast-time predictor.

    Predictors: every mode of :data:`~sts_lightning.forecast.modes.MODES` with D = top-k(Δ);
    each ``contrast`` mode again as ``<mode>_contrast`` with D = top-k(Δ_task − Δ_unrelated);
    ``raw_act``/``raw_icl``, the same pipeline on residual neurons (top-``raw_k``);
    ``repsim_sae``/``repsim_resid``, the cosine of the task's and the domain's mean latent /
    residual vectors. ``icl`` modes are NaN when the domains have no ICL pass.
    """
    stats, nan = task.stats, float("nan")
    delta, signed = stats.shift.feature_shift().float(), stats.shift.signed_shift().float()
    top = F.top_shifted(delta, k=k)
    raw_top = F.top_shifted(stats.raw_shift.feature_shift().float(), k=raw_k)
    contrast = contrast_shift(task)
    top_c = None if contrast is None else F.top_shifted(contrast, k=k)
    task_mean = stats.moments.compute()["mean"]
    task_raw_mean = stats.raw_moments.compute()["mean"]
    out = {}
    for name, d in domains.items():
        icl = d.shift is not None
        row = {m: nan if v is None else v for m, v in paper_scores(d, top, signed).items()}
        row |= {
            "raw_act": float(d.raw_moments.sts_act(raw_top)),
            "raw_icl": float(d.raw_shift.sts_icl(raw_top)) if icl else nan,
            "repsim_sae": _cosine(task_mean, d.moments.compute()["mean"]),
            "repsim_resid": _cosine(task_raw_mean, d.raw_moments.compute()["mean"]),
        }
        for predictor in contrast_modes() if top_c is not None else ():
            value = MODES[predictor.removesuffix("_contrast")].score(d, top_c, signed)
            row[predictor] = nan if value is None else value
        out[name] = row
    return out


def to_prediction(
    domains: Mapping[str, DomainStats],
    task: TaskForecast,
    *,
    layer: int,
    k: int,
    max_norm: float,
    config: PredictConfig,
) -> Prediction:
    """The paper's forecast as a :class:`Prediction` (what the STS callback tracks against).

    :func:`~sts_lightning.forecast.predict.assemble_prediction` on the task pass: the paper's
    modes come from the same statistics as :func:`score_domains`, to the same numbers.
    """
    return assemble_prediction(
        task.stats, domains, layer=layer, k=k, max_norm=max_norm, config=config
    )

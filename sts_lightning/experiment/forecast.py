"""Every forecast the experiment compares, from one set of forward passes per stage.

The paper's STS (:mod:`sts_lightning.forecast.predict`) plus what it is judged against, on the same
token rows (layer L residual stream, massive activations dropped):

- **domains** (once; independent of the source task): SAE latent moments and in-domain ICL
  shift (STS_act, notebook, signed, STS_ICL), and the same on the raw residual neurons;
- **source task** (per task and seed): the ICL shift Δ of the SAE latents and of the raw neurons,
  the shift caused by as many *unrelated* demonstrations (for the task-specific contrast
  Δ_task − Δ_unrelated), and the task's mean latent / residual vectors (similarity controls).

:func:`score_domains` turns these into one number per (domain, predictor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sts_lightning import functional as F
from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.predict import _check_examples, _Extractor, _select, model_width
from sts_lightning.forecast.prediction import DomainScore, Prediction
from sts_lightning.model.sae import ReconstructionQuality, sae_d_sae
from sts_lightning.stats import LatentMoments, PairedShift

__all__ = ["DomainStats", "Forecaster", "TaskForecast", "score_domains", "to_prediction"]

SAE_MODES = ("act", "icl", "notebook", "signed")
CONTRAST_MODES = ("act_contrast", "icl_contrast")
BASELINES = ("raw_act", "raw_icl", "repsim_sae", "repsim_resid")

_LOCAL = {"sync_on_compute": False}  # every process computes the whole forecast


@dataclass
class DomainStats:
    """Streaming statistics of one domain's scored tokens."""

    moments: LatentMoments
    """SAE latent moments (STS_act, notebook, signed)."""
    raw_moments: LatentMoments
    """Residual-neuron moments (raw baseline, representation similarity)."""
    shift: PairedShift | None
    """SAE shift under in-domain demonstrations (STS_ICL); ``None`` when ``domain_demos`` is 0."""
    raw_shift: PairedShift | None
    """The same on the raw neurons."""
    counts: dict[str, int]
    """``n_tokens``, ``n_dropped``, ``n_examples``."""


@dataclass
class TaskForecast:
    """Statistics of one source task's queries, for one seed of demonstrations."""

    shift: PairedShift
    """SAE shift under task demonstrations: the paper's Δ."""
    raw_shift: PairedShift
    """Raw-neuron shift under the same demonstrations."""
    contrast: PairedShift | None
    """SAE shift under as many unrelated demonstrations; ``None`` without a contrast pool."""
    moments: LatentMoments
    """SAE latent moments of the plain queries (similarity control)."""
    raw_moments: LatentMoments
    """Residual moments of the plain queries."""
    quality: dict[str, float]
    """SAE FVU, L0 and dead fraction on the plain query rows."""
    counts: dict[str, int]
    """``n_tokens``, ``n_dropped``, ``n_examples`` of the task pass."""


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
        self.model, self.tokenizer, self.sae, self.layer = model, tokenizer, sae, layer
        self.config, self.d_sae = config, sae_d_sae(sae)
        self.d_model = model_width(model)
        self.extractor = _Extractor(model, sae, tokenizer, layer, config)

    def _pairs(self, examples, n_demos, span, budget, seed, demo_pool=None):
        cfg = PredictConfig(**{**self.config.__dict__, "seed": seed})
        return _select(
            self.tokenizer, examples, n_demos, span, budget, cfg, self.extractor.exclude, demo_pool
        )

    def domains(
        self, domains: Mapping[str, Sequence[Example]], seed: int
    ) -> dict[str, DomainStats]:
        """Statistics of each domain's scored tokens (budget ``domain_tokens`` each)."""
        cfg, out = self.config, {}
        for name, examples in domains.items():
            examples = _check_examples(f"domains[{name!r}]", examples, cfg.domain_demos)
            paired = cfg.domain_demos > 0
            pairs, _ = self._pairs(
                examples, cfg.domain_demos, cfg.domain_span, cfg.domain_tokens, seed
            )
            stats = DomainStats(
                moments=LatentMoments(self.d_sae, **_LOCAL),
                raw_moments=LatentMoments(self.d_model, **_LOCAL),
                shift=PairedShift(self.d_sae, **_LOCAL) if paired else None,
                raw_shift=PairedShift(self.d_model, **_LOCAL) if paired else None,
                counts={},
            )
            counts = self.extractor.run(
                pairs,
                cfg.domain_span,
                name,
                paired=paired,
                moments=stats.moments,
                shift=stats.shift,
                raw_moments=stats.raw_moments,
                raw_shift=stats.raw_shift,
            )
            if counts["n_tokens"] == 0:
                raise ValueError(f"domain {name!r} has no token rows left after masking")
            stats.counts = counts | {"n_examples": len(pairs)}
            out[name] = stats
        return out

    def task(
        self,
        examples: Sequence[Example],
        seed: int,
        contrast_pool: Sequence[Example] | None = None,
        desc: str = "task",
    ) -> TaskForecast:
        """Task-side statistics; ``contrast_pool`` adds the unrelated-demonstration pass."""
        cfg = self.config
        examples = _check_examples("train_examples", examples, cfg.n_demos)
        pairs, _ = self._pairs(examples, cfg.n_demos, cfg.train_span, cfg.train_tokens, seed)
        out = TaskForecast(
            shift=PairedShift(self.d_sae, **_LOCAL),
            raw_shift=PairedShift(self.d_model, **_LOCAL),
            contrast=None,
            moments=LatentMoments(self.d_sae, **_LOCAL),
            raw_moments=LatentMoments(self.d_model, **_LOCAL),
            quality={},
            counts={},
        )
        quality = ReconstructionQuality(self.d_model, self.d_sae, **_LOCAL)
        counts = self.extractor.run(
            pairs,
            cfg.train_span,
            desc,
            paired=True,
            shift=out.shift,
            moments=out.moments,
            quality=quality,
            raw_moments=out.raw_moments,
            raw_shift=out.raw_shift,
        )
        if counts["n_tokens"] == 0:
            raise ValueError(
                f"no training-query row is left: all {counts['n_dropped']} were dropped as "
                "non-finite (NaN/inf) or massive activations (residual norm > `max_norm`)"
            )
        out.counts = counts | {"n_examples": len(pairs)}
        q = quality.compute()
        out.quality = {k: float(q[k]) for k in ("fvu", "l0", "dead_fraction")}
        if contrast_pool is not None:
            contrast_pool = _check_examples("contrast_pool", contrast_pool, cfg.n_demos)
            # Same queries (they depend on the seed and budget only), other demonstrations.
            pairs, _ = self._pairs(
                examples, cfg.n_demos, cfg.train_span, cfg.train_tokens, seed, contrast_pool
            )
            out.contrast = PairedShift(self.d_sae, **_LOCAL)
            self.extractor.run(
                pairs, cfg.train_span, f"{desc} (unrelated)", paired=True, shift=out.contrast
            )
        return out


def _cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def contrast_shift(task: TaskForecast) -> Tensor | None:
    """Δ_task − Δ_unrelated ``(d_sae,)``: the part of the ICL shift the task's content causes."""
    if task.contrast is None:
        return None
    return (task.shift.feature_shift() - task.contrast.feature_shift()).float()


def score_domains(
    domains: Mapping[str, DomainStats], task: TaskForecast, k: int, raw_k: int
) -> dict[str, dict[str, float]]:
    """``{domain: {predictor: value}}`` for every forecast-time predictor.

    Predictors: the paper's modes (``act``, ``icl``, ``notebook``, ``signed``) with
    D = top-k(Δ); ``act_contrast``/``icl_contrast`` with D = top-k(Δ_task − Δ_unrelated);
    ``raw_act``/``raw_icl``, the same pipeline on residual neurons (top-``raw_k``);
    ``repsim_sae``/``repsim_resid``, the cosine of the task's and the domain's mean latent /
    residual vectors. ``icl`` modes are NaN when the domains have no ICL pass.
    """
    delta, signed = task.shift.feature_shift().float(), task.shift.signed_shift().float()
    top = F.top_shifted(delta, k=k)
    raw_top = F.top_shifted(task.raw_shift.feature_shift().float(), k=raw_k)
    contrast = contrast_shift(task)
    top_c = None if contrast is None else F.top_shifted(contrast, k=k)
    task_mean = task.moments.compute()["mean"]
    task_raw_mean = task.raw_moments.compute()["mean"]
    nan = float("nan")
    out = {}
    for name, d in domains.items():
        icl = d.shift is not None
        row = {
            "act": float(d.moments.sts_act(top)),
            "icl": float(d.shift.sts_icl(top)) if icl else nan,
            "notebook": float(d.moments.sts_notebook(top)),
            "signed": float(d.moments.sts_signed(signed, top)),
            "raw_act": float(d.raw_moments.sts_act(raw_top)),
            "raw_icl": float(d.raw_shift.sts_icl(raw_top)) if icl else nan,
            "repsim_sae": _cosine(task_mean, d.moments.compute()["mean"]),
            "repsim_resid": _cosine(task_raw_mean, d.raw_moments.compute()["mean"]),
        }
        if top_c is not None:
            row["act_contrast"] = float(d.moments.sts_act(top_c))
            row["icl_contrast"] = float(d.shift.sts_icl(top_c)) if icl else nan
        out[name] = row
    return out


def to_prediction(
    domains: Mapping[str, DomainStats],
    task: TaskForecast,
    scores: Mapping[str, Mapping[str, float]],
    *,
    layer: int,
    k: int,
    max_norm: float,
    config: PredictConfig,
) -> Prediction:
    """The paper's forecast as a :class:`Prediction` (what the STS callback tracks against)."""
    delta = task.shift.feature_shift().float()
    return Prediction(
        domains={
            n: DomainScore(
                act=s["act"],
                notebook=s["notebook"],
                signed=s["signed"],
                icl=None if domains[n].shift is None else s["icl"],
                budget=config.domain_tokens,
                **domains[n].counts,
            )
            for n, s in scores.items()
        },
        shift=delta,
        signed_shift=task.shift.signed_shift().float(),
        top_latents=F.top_shifted(delta, k=k),
        layer=layer,
        train=task.counts | {"budget": config.train_tokens},
        quality=task.quality,
        max_norm=max_norm,
        config=config.__dict__.copy(),
        domain_means={n: d.moments.compute()["mean"].float() for n, d in domains.items()},
    )

"""The forecast before training: which latents will the training data shift, and who uses them.

:func:`predict` runs the paper's two steps with the pieces of this package, in data order:

1. Training queries are encoded twice (:func:`~sts_lightning.data.prompts.build_pairs`): plain, and
   after ``n_demos`` training demonstrations. The residual stream after layer L of the *same*
   tokens in both (:func:`~sts_lightning.model.capture.iter_span_activations`) goes through the SAE
   into a :class:`~sts_lightning.stats.PairedShift` → Δ, δ and D = top-k(Δ).
2. Each domain's tokens go through the same path into a
   :class:`~sts_lightning.stats.LatentMoments` (STS_act, notebook, signed) and, with in-domain
   demonstrations, a ``PairedShift`` (STS_ICL).

No token row outlives its batch. Rows with massive activations (a residual norm far above the
median) are dropped from every statistic, in pairs, and counted.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from sts_lightning import functional as F
from sts_lightning.data.prompts import EncodedPrompt, Example, build_pairs
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.prediction import DomainScore, Prediction
from sts_lightning.model.capture import decoder_layers, iter_span_activations
from sts_lightning.model.sae import ReconstructionQuality, check_sae, encode, sae_d_sae, sae_layer
from sts_lightning.stats import LatentMoments, PairedShift

__all__ = ["predict"]

log = logging.getLogger(__name__)

Pair = tuple[EncodedPrompt, EncodedPrompt]


class _Extractor:
    """Runs base/ICL pairs through model → layer L → SAE, dropping massive activations."""

    def __init__(self, model, sae, tokenizer, layer: int, cfg: PredictConfig) -> None:
        self.model, self.sae, self.layer, self.cfg = model, sae, layer, cfg
        self.pad_id = _pad_id(tokenizer)
        self.exclude = set(tokenizer.all_special_ids) if cfg.exclude_special_tokens else set()
        self.max_norm = cfg.max_norm

    def _rows(
        self, prompts: Sequence[EncodedPrompt], span: str, desc: str | None
    ) -> Iterator[Tensor]:
        return iter_span_activations(
            self.model,
            [p.input_ids for p in prompts],
            [p.span(span) for p in prompts],
            layer=self.layer,
            batch_size=self.cfg.batch_size,
            pad_token_id=self.pad_id,
            exclude_token_ids=self.exclude,
            progress=self.cfg.progress and desc is not None,
            desc=desc,
        )

    def _keep(self, x: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(x, dim=-1)
        finite = torch.isfinite(norms)
        if self.max_norm is None and finite.any():
            # Fixed once, from the first batch, so every statistic uses the same threshold.
            self.max_norm = float(norms[finite].median()) * self.cfg.outlier_factor
            log.info("massive-activation threshold: residual norm > %.1f", self.max_norm)
        # NaN/inf rows fail the comparison: they are dropped (and counted) like outliers.
        return norms <= (self.max_norm if self.max_norm is not None else float("inf"))

    def run(
        self,
        pairs: Sequence[Pair],
        span: str,
        desc: str,
        *,
        paired: bool,
        moments=None,
        shift=None,
        quality=None,
        raw_moments=None,
        raw_shift=None,
    ) -> dict[str, int]:
        """Feed the statistics given; ``paired=False`` runs only the base prompts.

        ``moments``/``shift`` get SAE latents; ``raw_moments``/``raw_shift`` get the residual rows
        themselves (the raw-neuron baseline), from the same forward passes.
        """
        base_it = self._rows([b for b, _ in pairs], span, desc)
        # One bar: the ICL pass advances in lockstep with the base one.
        icl_it = self._rows([i for _, i in pairs], span, None) if paired else None
        kept = dropped = 0
        for base in base_it:
            icl = next(icl_it) if icl_it is not None else None
            keep = self._keep(base)
            if icl is not None:
                if icl.shape != base.shape:  # cannot happen with aligned spans; never pair wrongly
                    raise RuntimeError("base and ICL rows are misaligned")
                keep &= self._keep(icl)
            kept, dropped = kept + int(keep.sum()), dropped + int((~keep).sum())
            if not keep.any():
                continue
            base_lat = encode(self.sae, base[keep])
            if moments is not None:
                moments.update(base_lat)
            if quality is not None:
                with torch.inference_mode():
                    x_hat = self.sae.decode(base_lat).float()
                quality.update(base[keep].to(x_hat.device), x_hat, base_lat)
            if shift is not None:
                shift.update(base_lat, encode(self.sae, icl[keep]))
            if raw_moments is not None:
                raw_moments.update(base[keep])
            if raw_shift is not None:
                raw_shift.update(base[keep], icl[keep])
        return {"n_tokens": kept, "n_dropped": dropped}


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("`tokenizer` has neither a pad nor an eos token: set tokenizer.pad_token")
    # Padding is masked out, so any valid id works; say so once rather than fail.
    warnings.warn("`tokenizer` has no pad token; padding with the eos token", stacklevel=3)
    return tokenizer.eos_token_id


def _select(
    tokenizer,
    examples: Sequence[Example],
    n_demos: int,
    span: str,
    budget: int,
    cfg: PredictConfig,
    exclude: set[int],
    demo_pool: Sequence[Example] | None = None,
) -> tuple[list[Pair], int]:
    """Seeded choice of examples until ``budget`` span tokens; returns the pairs and the count.

    The queries depend only on ``examples``, the seed and the budget; ``demo_pool`` (default:
    ``examples``) only changes what precedes them in the ICL prompt.
    """
    order = list(range(len(examples)))
    random.Random(cfg.seed).shuffle(order)
    chosen, n_tokens, chunk = [], 0, 32
    for first in range(0, len(order), chunk):
        queries = [examples[i] for i in order[first : first + chunk]]
        for base, icl in build_pairs(
            tokenizer,
            queries,
            n_demos,
            seed=cfg.seed,
            demo_pool=examples if demo_pool is None else demo_pool,
            system_prompt=cfg.system_prompt,
            use_chat_template=cfg.use_chat_template,
        ):
            start, end = base.span(span)
            n_tokens += sum(t not in exclude for t in base.input_ids[start:end])
            chosen.append((base, icl))
            if n_tokens >= budget:
                # Longest ICL prompts first: similar lengths batch together, less padding.
                return sorted(chosen, key=lambda p: -len(p[1].input_ids)), n_tokens
    return sorted(chosen, key=lambda p: -len(p[1].input_ids)), n_tokens


def _check_examples(name: str, examples: Any, n_demos: int) -> list[Example]:
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence):
        raise TypeError(f"`{name}` must be a sequence of Example, got {type(examples).__name__}")
    examples = list(examples)
    if not all(isinstance(e, Example) for e in examples):
        raise TypeError(f"`{name}` must contain only sts_lightning.data.prompts.Example items")
    if len(examples) < n_demos + 1:
        raise ValueError(
            f"`{name}` has {len(examples)} examples; at least {n_demos + 1} are needed for "
            f"{n_demos} demonstrations plus the query"
        )
    return examples


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
    layer = cfg.layer if cfg.layer is not None else sae_layer(sae)
    if layer is None:
        raise ValueError("`config.layer` is None and the SAE's metadata names no hook layer")
    n_layers = len(decoder_layers(model))
    check_sae(
        sae, d_model=model.get_input_embeddings().weight.shape[1], n_layers=n_layers, layer=layer
    )
    train_examples = _check_examples("train_examples", train_examples, cfg.n_demos)
    if not isinstance(domains, Mapping) or not domains:
        raise ValueError("`domains` must be a non-empty mapping {name: examples}")
    domains = {
        n: _check_examples(f"domains[{n!r}]", ex, cfg.domain_demos) for n, ex in domains.items()
    }

    d_sae = sae_d_sae(sae)
    if cfg.k > d_sae:  # fail before any forward pass
        raise ValueError(f"`config.k`={cfg.k} exceeds the SAE's d_sae={d_sae}")
    extractor = _Extractor(model, sae, tokenizer, layer, cfg)
    timings: dict[str, float] = {}

    pairs, _ = _select(
        tokenizer,
        train_examples,
        cfg.n_demos,
        cfg.train_span,
        cfg.train_tokens,
        cfg,
        extractor.exclude,
    )
    # Every process runs the whole forecast on the same data, so nothing is reduced across
    # processes (a DDP sum would count each token once per rank).
    local = {"sync_on_compute": False}
    shift = PairedShift(d_sae, **local)
    quality = ReconstructionQuality(model_width(model), d_sae, **local)
    train = extractor.run(pairs, cfg.train_span, "train", paired=True, shift=shift, quality=quality)
    if train["n_tokens"] == 0:
        raise ValueError(
            f"no training-query row is left: all {train['n_dropped']} were dropped as non-finite "
            f"(NaN/inf) or massive activations (residual norm > `max_norm`={extractor.max_norm})"
        )
    train |= {"n_examples": len(pairs), "budget": cfg.train_tokens}
    delta, signed = shift.feature_shift().float(), shift.signed_shift().float()
    top = F.top_shifted(delta, k=cfg.k)
    timings["train"] = time.perf_counter() - start

    scores, means = {}, {}
    for name, examples in domains.items():
        t0 = time.perf_counter()
        paired = cfg.domain_demos > 0
        pairs, n_avail = _select(
            tokenizer,
            examples,
            cfg.domain_demos,
            cfg.domain_span,
            cfg.domain_tokens,
            cfg,
            extractor.exclude,
        )
        if n_avail < cfg.domain_tokens:
            warnings.warn(
                f"domain {name!r} has {n_avail} tokens, fewer than `domain_tokens`="
                f"{cfg.domain_tokens}; scoring it on {n_avail}",
                stacklevel=2,
            )
        moments = LatentMoments(d_sae, **local)
        dshift = PairedShift(d_sae, **local) if paired else None
        counts = extractor.run(
            pairs, cfg.domain_span, name, paired=paired, moments=moments, shift=dshift
        )
        if counts["n_tokens"] == 0:
            raise ValueError(f"domain {name!r} has no token rows left after masking")
        scores[name] = DomainScore(
            act=float(moments.sts_act(top)),
            notebook=float(moments.sts_notebook(top)),
            signed=float(moments.sts_signed(signed, top)),
            icl=float(dshift.sts_icl(top)) if dshift is not None else None,
            budget=cfg.domain_tokens,
            n_examples=len(pairs),
            **counts,
        )
        means[name] = moments.compute()["mean"].float()
        timings[f"domain/{name}"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    q = quality.compute()
    return Prediction(
        domains=scores,
        shift=delta,
        signed_shift=signed,
        top_latents=top,
        layer=layer,
        train=train,
        quality={k: float(q[k]) for k in ("fvu", "l0", "dead_fraction")},
        max_norm=float(extractor.max_norm),
        config=asdict(cfg),
        domain_means=means,
        timings=timings,
        meta=dict(meta or {}),
    )


def model_width(model: torch.nn.Module) -> int:
    """The residual-stream width ``d_model`` of a causal LM (from its input embedding)."""
    return model.get_input_embeddings().weight.shape[1]

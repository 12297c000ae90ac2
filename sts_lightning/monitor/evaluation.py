"""Held-out losses during training and how well a forecast matched what training did.

What the STS callback measures while a model trains (:class:`~sts_lightning.monitor.tracker.
STSTracker`): the teacher-forced NLL of held-out items per domain (:func:`item_losses`, the
answer tokens, or every token of plain texts; > 0 change: worse; the forward is
:mod:`~sts_lightning.monitor.teacher_forcing`'s), and the agreement of the forecast with the
realised latent shift (:func:`latent_spearman`, :func:`shift_metrics`) and with the per-domain
deltas (:func:`forecast_correlations`). The experiment's pre-registered, answer-level realised
change (the correct option's log-odds among the choices) is
:mod:`sts_lightning.monitor.answer_scores`; its item-level NLL stays here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy import stats as sps
from torch import Tensor

from sts_lightning.config import positive_int
from sts_lightning.data.batching import LENGTH_MULTIPLE
from sts_lightning.data.prompts import EncodedPrompt, Example, encode_example
from sts_lightning.forecast.prediction import Prediction
from sts_lightning.functional import overlap_at_k, top_shifted
from sts_lightning.metric import TransferabilityCorrelation
from sts_lightning.monitor.teacher_forcing import (
    pad_batch,
    scored_logits,
    scoring_pass,
    target_logprobs,
)

__all__ = [
    "EVAL_SPANS",
    "ItemLosses",
    "encode_eval_set",
    "forecast_correlations",
    "item_losses",
    "latent_spearman",
    "scored_logits",
    "sequence_losses",
    "shift_metrics",
]

EVAL_SPANS = ("all", "answer", "prompt")
"""Which tokens of a held-out item are scored: all of them, the answer, or the prompt."""


def encode_eval_set(
    tokenizer,
    examples: Sequence[Example],
    max_tokens: int,
    *,
    span: str = "all",
    use_chat_template: bool = True,
) -> list[EncodedPrompt]:
    """Encode examples in order until their scored tokens reach ``max_tokens``.

    ``span`` picks the scored tokens: ``"all"`` (prompt and answer: the domain's perplexity,
    cheapest per token), ``"answer"`` (the answer given the prompt), or ``"prompt"``. Items
    without an answer are scored on their prompt.
    """
    if span not in EVAL_SPANS:
        raise ValueError(f"`span` must be 'all', 'answer' or 'prompt', got {span!r}")
    positive_int("max_tokens", max_tokens)
    out, total = [], 0
    for example in examples:
        enc = encode_example(tokenizer, example, use_chat_template=use_chat_template)
        enc.scored = span if example.answer is not None else "prompt"
        start, end = enc.span(enc.scored)
        out.append(enc)
        total += end - start
        if total >= max_tokens:
            break
    return out


@dataclass
class ItemLosses:
    """One model's pass over one named set of items."""

    nll: Tensor
    """``(n_items,)`` float64: summed NLL of each item's scored tokens."""
    counts: Tensor
    """``(n_items,)`` int64: scored tokens per item."""
    rows: Tensor | None
    """``(n_rows, d_model)`` float32: layer-L residual rows of the scored tokens (special tokens
    excluded), in item then position order (the same rows for every model); ``None`` without a
    ``layer``."""


@torch.no_grad()
def item_losses(
    model: torch.nn.Module,
    encoded: Mapping[str, Sequence[EncodedPrompt]],
    *,
    pad_token_id: int,
    layer: int | None = None,
    exclude_token_ids: Sequence[int] = (),
    batch_size: int = 8,
) -> dict[str, ItemLosses]:
    """Per-item NLL of the scored span (and layer-``layer`` rows) of every named set, one pass.

    Args:
        model: A causal LM (restored to its train/eval mode afterwards).
        encoded: ``{name: encoded items}`` from :func:`encode_eval_set`.
        pad_token_id: Fills padding (masked out).
        layer: Also keep the residual rows after this decoder layer (read with a hook in the
            same forward); ``None``: losses only.
        exclude_token_ids: Token ids left out of ``rows`` (special tokens).
        batch_size: Sequences per forward.
    """
    excluded = torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)
    out = {}
    with scoring_pass(model, layer) as store:
        for name, items in encoded.items():
            nll, counts, rows = [], [], []
            for first in range(0, len(items), batch_size):
                batch = items[first : first + batch_size]
                ids, mask = pad_batch([e.input_ids for e in batch], pad_token_id, LENGTH_MULTIPLE)
                scored = torch.zeros_like(ids, dtype=torch.bool)  # tokens whose loss counts
                for i, e in enumerate(batch):
                    start, end = e.span(getattr(e, "scored", "all"))
                    scored[i, max(start, 1) : end] = True  # position 0 has no context
                store.clear()
                logp, _ = target_logprobs(model, ids, mask, scored)
                per_item = torch.zeros(len(batch), dtype=torch.float64)
                nll.append(per_item.index_add_(0, scored.nonzero()[:, 0], -logp))
                counts.append(scored.sum(1))
                if layer is not None:  # the last forward's hidden state (a fallback ran twice)
                    keep = scored & ~torch.isin(ids, excluded)
                    rows.append(store[-1][keep.to(store[-1].device)].float().cpu())
            out[name] = ItemLosses(
                torch.cat(nll), torch.cat(counts), torch.cat(rows) if layer is not None else None
            )
    return out


def sequence_losses(
    model: torch.nn.Module,
    encoded: Mapping[str, Sequence[EncodedPrompt]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean NLL per scored token of each named set (:func:`item_losses`, pooled).

    Returns:
        ``{domain: mean NLL}``; NaN for a domain without scored tokens.
    """
    losses = item_losses(model, encoded, pad_token_id=pad_token_id, batch_size=batch_size)
    return {
        name: float(item.nll.sum() / item.counts.sum()) if item.counts.sum() else math.nan
        for name, item in losses.items()
    }


def latent_spearman(forecast: Tensor, realised: Tensor) -> float:
    """Spearman correlation of two per-latent shifts ``(d_sae,)``; NaN when either is constant."""
    a, b = forecast.double().cpu().numpy(), realised.double().cpu().numpy()
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(sps.spearmanr(a, b)[0])


def shift_metrics(
    prediction: Prediction, realised: Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """The realised shift against the forecast, and the realised STS of each domain.

    Args:
        prediction: The forecast; its ``k = len(top_latents)`` sets the size of both top sets.
        realised: Δ_real ``(d_sae,)``.

    Returns:
        ``(metrics, realised_sts)``: ``sts/shift/overlap@k``, ``sts/shift/total``,
        ``sts/shift/spearman`` and ``sts/realised/<domain>``; and ``{domain: STS_act over the
        top-k realised latents}`` (the paper's "actual shifted dimensions" variant).
    """
    k = len(prediction.top_latents)
    real_top = top_shifted(realised, k)
    out = {
        f"sts/shift/overlap@{k}": float(overlap_at_k(prediction.top_latents, real_top)),
        "sts/shift/total": float(realised.sum()),
        "sts/shift/spearman": latent_spearman(prediction.shift, realised),
    }
    realised_sts = {
        name: float(mean[real_top].sum()) for name, mean in prediction.domain_means.items()
    }
    out |= {f"sts/realised/{n}": v for n, v in realised_sts.items()}
    return out, realised_sts


def forecast_correlations(
    forecast: Mapping[str, float],
    realised_sts: Mapping[str, float],
    deltas: Mapping[str, float],
    *,
    absolute: bool = True,
) -> dict[str, float]:
    """Correlation of per-domain scores with the realised deltas, over the domains with both.

    Args:
        forecast: ``{domain: forecast STS}``.
        realised_sts: ``{domain: STS over the top-k realised latents}``.
        deltas: ``{domain: realised delta}``; non-finite ones are left out.
        absolute: Correlate with ``|delta|`` (the paper predicts magnitude).

    Returns:
        ``sts/corr/<stat>`` (forecast) and ``sts/corr_realised/<stat>`` for ``<stat>`` in
        pearson, spearman, kendall, pearson_p (NaN for a constant side); empty with fewer than
        3 common domains.
    """
    common = [n for n in forecast if n in deltas and math.isfinite(deltas[n])]
    out: dict[str, float] = {}
    if len(common) < 3:
        return out
    for prefix, scores in (("sts/corr", forecast), ("sts/corr_realised", realised_sts)):
        metric = TransferabilityCorrelation(
            absolute=absolute, n_bootstrap=500, sync_on_compute=False
        )
        metric.update(
            torch.tensor([scores[n] for n in common], dtype=torch.float64),
            torch.tensor([deltas[n] for n in common], dtype=torch.float64),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant: NaN, reported as is
            res = metric.compute()
        out |= {
            f"{prefix}/{key}": float(res[key])
            for key in ("pearson", "spearman", "kendall", "pearson_p")
        }
    return out

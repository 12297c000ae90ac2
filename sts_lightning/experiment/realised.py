"""What fine-tuning really did to each domain: paired answer-level scores and representation change.

One teacher-forced pass per model over fixed held-out choice items (never used for scoring)
gives, per item, the log-probability of every option's answer, the NLL of the item's content
tokens and the residual-stream rows of those tokens after layer L
(:func:`~sts_lightning.monitor.answer_scores.score_choices`). Comparing the base and the
fine-tuned pass item by item gives the realised change of the pre-registered metric with a
paired standard error, the secondary metrics beside it, and the post-training representation
change of each domain (an upper reference that needs the fine-tuned model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sts_lightning.data.prompts import Example
from sts_lightning.experiment.analysis import paired_delta
from sts_lightning.model.rows import keep_rows
from sts_lightning.model.sae import encode, sae_d_sae
from sts_lightning.monitor.answer_scores import ChoiceScores, score_choices
from sts_lightning.monitor.evaluation import ItemLosses, item_losses
from sts_lightning.stats import PairedShift

__all__ = ["ItemLosses", "compare", "exact_match", "item_costs", "item_losses", "score_choices"]

METRICS = ("choice_margin", "answer_nll", "item_nll")
_ENCODE_ROWS = 2048  # rows per SAE encoding in the post-training shift (~38 MB at d_sae 4,608)


def item_costs(scores: ChoiceScores, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-item value of ``metric`` as a cost (higher is worse) and its weight, ``(n_items,)``.

    A domain's change is ``Σ_i (cost_after_i − cost_before_i) / Σ_i w_i``: for ``choice_margin``
    the cost is ``−margin`` with weight 1 (the mean margin drop); for ``answer_nll`` /
    ``item_nll`` it is the item's summed NLL and the weight its token count (the change per
    token, a ratio estimator; :func:`~sts_lightning.experiment.analysis.paired_delta`). Items
    without a margin (a single option) have a NaN cost.
    """
    if metric == "choice_margin":
        cost = -scores.margin
        return cost.double().numpy(), np.ones(len(cost))
    if metric == "answer_nll":
        return scores.answer_nll.double().numpy(), scores.answer_tokens.double().numpy()
    if metric == "item_nll":
        return scores.item_nll.double().numpy(), scores.item_tokens.double().numpy()
    raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")


def _paired(before: ChoiceScores, after: ChoiceScores, metric: str) -> dict:
    """``delta``, ``se`` and the per-item costs of ``metric``, over items where it is defined."""
    b, w = item_costs(before, metric)
    a, _ = item_costs(after, metric)
    ok = np.isfinite(b) & np.isfinite(a)
    delta, se = paired_delta(b[ok], a[ok], w[ok]) if ok.any() else (np.nan, np.nan)
    return {"delta": delta, "se": se, "base": b.tolist(), "tuned": a.tolist(), "weight": w.tolist()}


def _post_shift(before: torch.Tensor, after: torch.Tensor, sae, max_norm: float) -> dict:
    """Post-training change of the same rows: SAE latents (all) and raw residual."""
    keep = keep_rows(before, max_norm)  # the forecast's massive-activation rule
    if not keep.any():
        return {"post_shift_sae": float("nan"), "post_shift_resid": float("nan")}
    shift = PairedShift(sae_d_sae(sae), sync_on_compute=False)
    before_kept, after_kept = before[keep], after[keep]
    # Encoded in chunks: dense latents of a long domain's rows are (rows × d_sae), several times
    # the rows' own size, and the sums stream.
    for first in range(0, len(before_kept), _ENCODE_ROWS):
        rows = slice(first, first + _ENCODE_ROWS)
        shift.update(encode(sae, before_kept[rows]), encode(sae, after_kept[rows]))
    diff = (after_kept - before_kept).double().square().sum(-1).mean()
    return {
        "post_shift_sae": float(shift.feature_shift().sum()),
        "post_shift_resid": float(diff / before_kept.double().square().sum(-1).mean()),
    }


def _finite_mean(values: torch.Tensor) -> float:
    """Mean of the finite entries; NaN when there is none (single-option items: no margin)."""
    finite = values[values.isfinite()]
    return float(finite.double().mean()) if len(finite) else float("nan")


def _per_item(b: ChoiceScores, a: ChoiceScores) -> dict:
    """Every secondary per-item value, before (``base``) and after (``tuned``)."""
    pairs = {
        "margin": (b.margin, a.margin),
        "correct": (b.accurate, a.accurate),
        "answer_nll": (b.answer_nll, a.answer_nll),
        "item_nll": (b.item_nll, a.item_nll),
    }
    out = {k: {"base": x.tolist(), "tuned": y.tolist()} for k, (x, y) in pairs.items()}
    return out | {"answer_tokens": b.answer_tokens.tolist(), "item_tokens": b.item_tokens.tolist()}


def compare(
    base: Mapping[str, ChoiceScores],
    now: Mapping[str, ChoiceScores],
    sae,
    max_norm: float,
    *,
    metric: str = "choice_margin",
) -> dict[str, dict]:
    """Per-domain realised change between two passes over the same choice items.

    Returns:
        ``{domain: {...}}``: ``metric``; ``delta`` and ``se`` of ``metric`` (> 0: worse,
        item-paired standard error) with ``items`` (``base``, ``tuned``, ``weight``: the
        per-item costs of :func:`item_costs`, so ``delta = Σ (tuned − base) / Σ weight``);
        ``margin_base``/``margin`` and ``accuracy_base``/``accuracy`` (means over items);
        ``answer_nll_delta``/``answer_nll_se`` (per answer token) and
        ``item_nll_delta``/``item_nll_se`` (per content token); ``base_loss``/``loss`` (item NLL
        per content token); ``post_shift_sae`` (Σ_j mean_t (h_j' − h_j)², all latents) and
        ``post_shift_resid`` (mean_t ‖r' − r‖² / mean_t ‖r‖²) over rows whose base norm is at
        most ``max_norm``; ``per_item`` (margin, correct, answer and item NLL before and
        after, token counts); ``n_items``, ``n_tokens`` (content tokens) and
        ``n_answer_tokens``.
    """
    out = {}
    for name, b in base.items():
        a = now[name]
        same = torch.equal(a.correct, b.correct) and torch.equal(a.item_tokens, b.item_tokens)
        if not same or a.option_logp.shape != b.option_logp.shape:
            raise ValueError(f"domain {name!r}: the two passes did not score the same items")
        primary = _paired(b, a, metric)
        answer, item = _paired(b, a, "answer_nll"), _paired(b, a, "item_nll")
        tokens = int(b.item_tokens.sum())
        row = {"metric": metric, "delta": primary["delta"], "se": primary["se"]}
        row["items"] = {k: primary[k] for k in ("base", "tuned", "weight")}
        row |= {
            "margin_base": _finite_mean(b.margin),
            "margin": _finite_mean(a.margin),
            "accuracy_base": float(b.accurate.double().mean()),
            "accuracy": float(a.accurate.double().mean()),
            "answer_nll_delta": answer["delta"],
            "answer_nll_se": answer["se"],
            "item_nll_delta": item["delta"],
            "item_nll_se": item["se"],
            "base_loss": float(b.item_nll.sum()) / tokens,
            "loss": float(a.item_nll.sum()) / tokens,
        }
        if b.rows is not None and a.rows is not None:
            row |= _post_shift(b.rows, a.rows, sae, max_norm)
        else:
            row |= {"post_shift_sae": float("nan"), "post_shift_resid": float("nan")}
        row["per_item"] = _per_item(b, a)
        row |= {"n_items": len(b.correct), "n_tokens": tokens}
        row["n_answer_tokens"] = int(b.answer_tokens.sum())
        out[name] = row
    return out


def exact_match(
    model,
    tokenizer,
    examples: Sequence[Example],
    score,
    *,
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> float:
    """Greedy exact-match rate on held-out source-task problems.

    ``score(completion, example)`` returns 1.0 for a correct answer; prompts are chat-templated
    with the generation prompt (:func:`~sts_lightning.training.rollout.encode_prompts`).
    """
    from sts_lightning.training.rollout import encode_prompts, sample_completions

    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        correct = 0.0
        for first in range(0, len(examples), batch_size):
            batch = list(examples[first : first + batch_size])
            ids, mask = encode_prompts(tokenizer, [e.prompt for e in batch])
            out, _ = sample_completions(
                model,
                tokenizer,
                ids.to(device),
                mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            texts = tokenizer.batch_decode(out, skip_special_tokens=True)
            correct += sum(
                float(score(t.strip(), e) == 1.0) for t, e in zip(texts, batch, strict=True)
            )
        return correct / len(examples)
    finally:
        model.train(was_training)

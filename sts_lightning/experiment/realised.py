"""What fine-tuning really did to each domain: paired held-out losses and representation change.

One teacher-forced pass per model over fixed held-out items (never used for scoring) gives, per
item, the summed NLL of its scored tokens and the residual-stream rows of those tokens after
layer L. Comparing the base and the fine-tuned pass item by item gives the realised loss delta
with a paired standard error, and the post-training representation change of each domain (an
upper reference that needs the fine-tuned model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sts_lightning.data.prompts import Example
from sts_lightning.experiment.analysis import paired_delta
from sts_lightning.model.rows import keep_rows
from sts_lightning.model.sae import encode, sae_d_sae
from sts_lightning.monitor.evaluation import ItemLosses, item_losses
from sts_lightning.stats import PairedShift

__all__ = ["ItemLosses", "compare", "exact_match", "item_losses"]


def compare(
    base: Mapping[str, ItemLosses], now: Mapping[str, ItemLosses], sae, max_norm: float
) -> dict[str, dict[str, float]]:
    """Per-domain realised change between two passes over the same items.

    Returns:
        ``{domain: {...}}`` with ``delta`` (mean NLL change per scored token, > 0: worse),
        ``se`` (item-paired standard error), ``base_loss``, ``loss``, ``post_shift_sae``
        (Σ_j mean_t (h_j' − h_j)², all latents) and ``post_shift_resid`` (mean_t ‖r' − r‖² /
        mean_t ‖r‖²), over rows whose base norm is at most ``max_norm``.
    """
    out = {}
    for name, b in base.items():
        a = now[name]
        if not torch.equal(a.counts, b.counts) or a.rows.shape != b.rows.shape:
            raise ValueError(f"domain {name!r}: the two passes did not score the same tokens")
        delta, se = paired_delta(b.nll.numpy(), a.nll.numpy(), b.counts.numpy())
        keep = keep_rows(b.rows, max_norm)  # the forecast's massive-activation rule
        shift = PairedShift(sae_d_sae(sae), sync_on_compute=False)
        if keep.any():
            shift.update(encode(sae, b.rows[keep]), encode(sae, a.rows[keep]))
        diff = (a.rows[keep] - b.rows[keep]).double().square().sum(-1).mean()
        total = b.nll.sum() / b.counts.sum()
        out[name] = {
            "delta": delta,
            "se": se,
            "base_loss": float(total),
            "loss": float(a.nll.sum() / a.counts.sum()),
            "post_shift_sae": float(shift.feature_shift().sum()) if keep.any() else float("nan"),
            "post_shift_resid": float(diff / b.rows[keep].double().square().sum(-1).mean()),
            "n_items": int(b.counts.numel()),
            "n_tokens": int(b.counts.sum()),
        }
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

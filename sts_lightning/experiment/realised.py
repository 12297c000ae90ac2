"""What fine-tuning really did to each domain: paired held-out losses and representation change.

One teacher-forced pass per model over fixed held-out items (never used for scoring) gives, per
item, the summed NLL of its scored tokens and the residual-stream rows of those tokens after
layer L. Comparing the base and the fine-tuned pass item by item gives the realised loss delta
with a paired standard error, and the post-training representation change of each domain (an
upper reference that needs the fine-tuned model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as TF
from torch import Tensor

from sts_lightning.features import decoder_layers
from sts_lightning.prompts import EncodedPrompt, Example
from sts_lightning.sae import encode
from sts_lightning.stats import PairedShift

__all__ = ["ItemLosses", "compare", "exact_match", "item_losses"]


@dataclass
class ItemLosses:
    """One model's pass over one domain's held-out items."""

    nll: Tensor
    """``(n_items,)`` float64: summed NLL of each item's scored tokens."""
    counts: Tensor
    """``(n_items,)`` int64: scored tokens per item."""
    rows: Tensor
    """``(n_rows, d_model)`` float32: layer-L residual rows of the scored tokens (special tokens
    excluded), in item then position order: the same rows for every model."""


def _hidden_hook(store: list[Tensor]):
    def hook(module, args, output):
        store.append(output[0] if isinstance(output, tuple) else output)

    return hook


@torch.no_grad()
def item_losses(
    model: torch.nn.Module,
    encoded: Mapping[str, Sequence[EncodedPrompt]],
    *,
    layer: int,
    pad_token_id: int,
    exclude_token_ids: Sequence[int] = (),
    batch_size: int = 8,
) -> dict[str, ItemLosses]:
    """Per-item NLL of the scored span and layer-``layer`` rows, for every named set.

    Logits are computed only where a next token is scored (``logits_to_keep`` with a mask), the
    way :func:`~sts_lightning.sft.answer_nll` trains.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    excluded = torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)
    store: list[Tensor] = []
    handle = decoder_layers(model)[layer].register_forward_hook(_hidden_hook(store))
    try:
        out = {}
        for name, items in encoded.items():
            nll, counts, rows = [], [], []
            for first in range(0, len(items), batch_size):
                batch = items[first : first + batch_size]
                width = max(len(e.input_ids) for e in batch)
                ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                scored = torch.zeros_like(ids, dtype=torch.bool)  # tokens whose loss counts
                for i, e in enumerate(batch):
                    ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
                    mask[i, : len(e.input_ids)] = 1
                    start, end = e.span(getattr(e, "scored", "all"))
                    scored[i, max(start, 1) : end] = True  # position 0 has no context
                predictors = TF.pad(scored[:, 1:], (0, 1), value=False)  # position t predicts t+1
                store.clear()
                try:
                    logits = model(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        logits_to_keep=predictors.to(device),
                        use_cache=False,
                    ).logits
                except (TypeError, IndexError):  # no `logits_to_keep`, or no mask
                    store.clear()
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                if logits.dim() == 3:
                    logits = logits[predictors.to(device)]
                token_nll = TF.cross_entropy(
                    logits.float(), ids[scored].to(device), reduction="none"
                ).double()
                item = scored.nonzero()[:, 0].to(device)
                nll.append(
                    torch.zeros(len(batch), dtype=torch.float64, device=device)
                    .index_add_(0, item, token_nll)
                    .cpu()
                )
                counts.append(scored.sum(1))
                keep = scored & ~torch.isin(ids, excluded)
                rows.append(store[0][keep.to(device)].float().cpu())
            out[name] = ItemLosses(torch.cat(nll), torch.cat(counts), torch.cat(rows))
        return out
    finally:
        handle.remove()
        model.train(was_training)


def _delta_se(before: Tensor, after: Tensor, counts: Tensor) -> tuple[float, float]:
    from sts_lightning.experiment.analysis import paired_delta

    return paired_delta(before.numpy(), after.numpy(), counts.numpy())


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
        delta, se = _delta_se(b.nll, a.nll, b.counts)
        keep = torch.linalg.vector_norm(b.rows, dim=-1) <= max_norm
        shift = PairedShift(encode_width(sae), sync_on_compute=False)
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


def encode_width(sae) -> int:
    from sts_lightning.sae import sae_d_sae

    return sae_d_sae(sae)


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
    with the generation prompt (:func:`~sts_lightning.rollout.encode_prompts`).
    """
    from sts_lightning.rollout import encode_prompts, sample_completions

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

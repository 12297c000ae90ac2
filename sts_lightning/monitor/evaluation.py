"""Realised per-domain change: held-out loss of the model on each domain's texts.

A domain's realised delta is ``loss(θ_now) − loss(θ_base)`` on fixed held-out items: the mean
negative log-likelihood of the answer tokens (of every token for plain texts), teacher-forced.
Positive means fine-tuning made the model worse on that domain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sts_lightning.data.prompts import EncodedPrompt, Example, encode_example

__all__ = ["ItemLosses", "encode_eval_set", "item_losses", "scored_logits", "sequence_losses"]


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
    if span not in ("all", "answer", "prompt"):
        raise ValueError(f"`span` must be 'all', 'answer' or 'prompt', got {span!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"`max_tokens` must be a positive int, got {max_tokens!r}")
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


def scored_logits(model, input_ids: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
    """Logits ``(N, V)`` at the ``N`` True ``positions`` ``(B, T)`` only.

    Uses the model's own ``logits_to_keep`` with a boolean mask, so the vocabulary projection
    runs only where a next token is scored; a model without it (or one whose ``logits_to_keep``
    takes no mask, as in older transformers) falls back to full logits, selected here.
    """
    try:
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            logits_to_keep=positions,
            use_cache=False,
        ).logits
    except (TypeError, IndexError):  # no `logits_to_keep`, or one that takes no mask
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits[positions] if logits.dim() == 3 else logits


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


def _hidden_hook(store: list[Tensor]):
    def hook(module, args, output):
        store.append(output[0] if isinstance(output, tuple) else output)

    return hook


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
    from sts_lightning.model.capture import decoder_layers

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    excluded = torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)
    store: list[Tensor] = []
    handle = None
    if layer is not None:
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
                predictors = F.pad(scored[:, 1:], (0, 1), value=False)  # position t predicts t+1
                store.clear()
                logits = scored_logits(
                    model, ids.to(device), mask.to(device), predictors.to(device)
                )
                token_nll = F.cross_entropy(
                    logits.float(), ids[scored].to(device), reduction="none"
                ).double()
                item = scored.nonzero()[:, 0].to(device)
                per_item = torch.zeros(len(batch), dtype=torch.float64, device=device)
                nll.append(per_item.index_add_(0, item, token_nll).cpu())
                counts.append(scored.sum(1))
                if layer is not None:  # the last forward's hidden state (a fallback ran twice)
                    keep = scored & ~torch.isin(ids, excluded)
                    rows.append(store[-1][keep.to(device)].float().cpu())
            out[name] = ItemLosses(
                torch.cat(nll), torch.cat(counts), torch.cat(rows) if layer is not None else None
            )
        return out
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)


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

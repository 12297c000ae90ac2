"""Realised per-domain change: held-out loss of the model on each domain's texts.

A domain's realised delta is ``loss(θ_now) − loss(θ_base)`` on fixed held-out items: the mean
negative log-likelihood of the answer tokens (of every token for plain texts), teacher-forced.
Positive means fine-tuning made the model worse on that domain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from sts_lightning.prompts import EncodedPrompt, Example, encode_example

__all__ = ["encode_eval_set", "sequence_losses"]


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


def sequence_losses(
    model: torch.nn.Module,
    encoded: Mapping[str, Sequence[EncodedPrompt]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean NLL per scored token of each named set, in one pass per batch.

    Args:
        model: A causal LM (restored to its train/eval mode afterwards).
        encoded: ``{domain: encoded items}`` from :func:`encode_eval_set`.
        pad_token_id: Fills padding (masked out).
        batch_size: Sequences per forward.

    Returns:
        ``{domain: mean NLL}``; NaN for a domain without scored tokens.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = {}
        for name, items in encoded.items():
            nll, count = 0.0, 0
            for first in range(0, len(items), batch_size):
                batch = items[first : first + batch_size]
                width = max(len(e.input_ids) for e in batch)
                ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                target = torch.full_like(ids, -100)
                for i, e in enumerate(batch):
                    ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
                    mask[i, : len(e.input_ids)] = 1
                    start, end = e.span(getattr(e, "scored", "all"))
                    start = max(start, 1)  # position 0 has no context to predict it from
                    target[i, start:end] = ids[i, start:end]
                with torch.no_grad():
                    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                # Token t is predicted from position t − 1.
                loss = F.cross_entropy(
                    logits[:, :-1].float().flatten(0, 1),
                    target[:, 1:].to(device).flatten(),
                    ignore_index=-100,
                    reduction="sum",
                )
                nll += float(loss)
                count += int((target[:, 1:] != -100).sum())
            out[name] = nll / count if count else math.nan
        return out
    finally:
        model.train(was_training)

"""Residual-stream rows to train an SAE on: chat-formatted examples through the model.

The rows are taken with the same massive-activation rule as every statistic
(:class:`~sts_lightning.model.rows.RowFilter`), so the SAE is trained on the kind of rows it
will later encode.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor

from sts_lightning.data.prompts import Example, encode_example
from sts_lightning.model.capture import iter_span_activations
from sts_lightning.model.rows import RowFilter
from sts_lightning.model.run_inputs import resolve_pad_id

__all__ = ["collect_activations"]

# Sequences are encoded until their spans hold this much more than the budget: special tokens
# and massive activations are dropped after encoding, and the progress bar stays honest.
_SLACK = 1.05


def collect_activations(
    model,
    tokenizer,
    examples: list[Example],
    *,
    layer: int,
    n_tokens: int,
    max_norm: float | None = None,
    outlier_factor: float = 10.0,
    batch_size: int = 8,
    seed: int = 0,
) -> Tensor:
    """Residual-stream rows ``(≤ n_tokens, d_model)`` of chat-formatted examples, for SAE training.

    Special tokens, non-finite rows and rows with norm above ``max_norm`` (massive activations)
    are left out; ``None`` sets the threshold to ``outlier_factor`` × the median norm of the
    finite rows of the first batch, the same rule the predictor uses.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer (chat template, special tokens, pad token).
        examples: Texts to run; shuffled with ``seed``, then taken in order until the budget.
        layer: Decoder layer whose output (the residual stream) is collected.
        n_tokens: Row budget.
        max_norm: Largest row norm kept; ``None`` derives it from the first batch.
        outlier_factor: Multiple of the median norm used when ``max_norm`` is ``None``.
        batch_size: Sequences per forward pass.
        seed: Seed of the shuffle.

    Returns:
        float32 rows ``(n, d_model)`` on the CPU, ``n ≤ n_tokens``.
    """
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    encoded, planned = [], 0
    for e in examples:  # just enough sequences for the budget: an honest progress bar
        encoded.append(encode_example(tokenizer, e))
        start, end = encoded[-1].span("all")
        planned += end - start
        if planned >= n_tokens * _SLACK:
            break
    keep = RowFilter(max_norm, outlier_factor)
    rows, total = [], 0
    for batch in iter_span_activations(
        model,
        [e.input_ids for e in encoded],
        [e.span("all") for e in encoded],
        layer=layer,
        batch_size=batch_size,
        pad_token_id=resolve_pad_id(tokenizer),
        exclude_token_ids=set(tokenizer.all_special_ids),
        progress=True,
        desc="SAE data",
    ):
        batch = batch[keep(batch)]
        rows.append(batch.cpu())
        total += batch.shape[0]
        if total >= n_tokens:
            break
    return torch.cat(rows)[:n_tokens]

"""Teacher-forced scoring: the log-probability of chosen tokens, logits only where scored.

One batched forward serves every held-out measurement: the item NLL of the STS callback
(:func:`~sts_lightning.monitor.evaluation.item_losses`), the experiment's answer-level scores
(:func:`~sts_lightning.monitor.answer_scores.score_choices`) and the SFT loss
(:func:`scored_logits`). Position ``t`` predicts token ``t + 1``, so a target mask over tokens
is shifted one step left to select the logits that predict them, and the vocabulary projection
runs at those positions only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from sts_lightning.data.batching import padded_length

__all__ = ["pad_batch", "scored_logits", "scoring_pass", "target_logprobs"]


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_token_id: int, pad_to_multiple_of: int = 1
) -> tuple[Tensor, Tensor]:
    """Right-padded token ids ``(B, T)`` and their attention mask ``(B, T)`` (1 on tokens).

    ``T`` is the longest sequence rounded up to a multiple of ``pad_to_multiple_of`` (bf16
    forwards use :data:`~sts_lightning.data.batching.LENGTH_MULTIPLE`: fewer kernel shapes).

    Example:
        >>> ids, mask = pad_batch([[5, 6, 7], [8]], pad_token_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
        >>> pad_batch([[5, 6, 7], [8]], pad_token_id=0, pad_to_multiple_of=4)[0].tolist()
        [[5, 6, 7, 0], [8, 0, 0, 0]]
    """
    width = padded_length(max((len(s) for s in sequences), default=0), pad_to_multiple_of)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, seq in enumerate(sequences):
        ids[b, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[b, : len(seq)] = 1
    return ids, mask


def scored_logits(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    positions: Tensor,
    position_ids: Tensor | None = None,
) -> Tensor:
    """Logits ``(N, V)`` at the ``N`` True ``positions`` ``(B, T)`` only.

    Uses the model's own ``logits_to_keep`` with a boolean mask, so the vocabulary projection
    runs only where a next token is scored; a model without it (or one whose ``logits_to_keep``
    takes no mask, as in older transformers) falls back to full logits, selected here.
    ``position_ids`` ``(B, T)`` of packed rows (``attention_mask`` ``None``) keep their examples
    apart (:mod:`sts_lightning.data.packing`).
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None:
        config = getattr(model, "config", None)
        if "flash" in str(getattr(config, "_attn_implementation", None)):
            # Flash attention finds packed examples in one row only: (B, T) -> (1, B * T).
            input_ids, positions, position_ids = (
                x.reshape(1, -1) for x in (input_ids, positions, position_ids)
            )
        inputs |= {"input_ids": input_ids, "position_ids": position_ids}
    try:
        logits = model(**inputs, logits_to_keep=positions).logits
    except (TypeError, IndexError):  # no `logits_to_keep`, or one that takes no mask
        logits = model(**inputs).logits
    return logits[positions] if logits.dim() == 3 else logits


_ROWS = 512
"""Positions per fp32 log-softmax in :func:`target_logprobs` (~100 MB at a 49k vocabulary)."""


def target_logprobs(model, ids: Tensor, mask: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of every target token given its prefix, in one forward.

    Args:
        model: A causal LM.
        ids: ``(B, T)`` token ids (on any device; moved to the model's).
        mask: ``(B, T)`` attention mask.
        targets: ``(B, T)`` bool, the tokens to score; position 0 has no context and must be
            False.

    Returns:
        ``(logp, logits)``: ``(N,)`` float64 log-probabilities on the CPU, in ``(B, T)`` order
        of the ``N`` targets, and the logits ``(N, V)`` that predicted them (on the model's
        device, in the forward's dtype: bf16 under bf16 autocast).
    """
    if targets[:, :1].any():
        raise ValueError("`targets` must be False at position 0: the first token has no context")
    device = next(model.parameters()).device
    predictors = F.pad(targets[:, 1:], (0, 1), value=False)  # position t predicts t + 1
    logits = scored_logits(model, ids.to(device), mask.to(device), predictors.to(device))
    wanted = ids[targets].to(device)
    # fp32 log-softmax in row chunks: whole-item scoring keeps every content position, and one
    # fp32 copy plus its log-softmax would be two (N, V) tensors (2.4 GB at N = 6,000).
    logp = torch.cat([
        -F.cross_entropy(logits[i : i + _ROWS].float(), wanted[i : i + _ROWS], reduction="none")
        for i in range(0, len(wanted), _ROWS)
    ]) if len(wanted) else logits.new_zeros(0, dtype=torch.float32)  # fmt: skip
    return logp.double().cpu(), logits


@contextmanager
def scoring_pass(model: torch.nn.Module, layer: int | None = None) -> Iterator[list[Tensor]]:
    """Eval mode for a scoring pass, with decoder layer ``layer``'s outputs collected.

    Yields a list to which every forward appends the hidden state ``(B, T, d_model)`` after
    decoder layer ``layer`` (nothing when ``layer`` is ``None``); clear it before a forward
    and read its last entry after (a ``logits_to_keep`` fallback runs twice). Every
    submodule's own train/eval mode is restored on exit.
    """
    from sts_lightning.model.capture import decoder_layers

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    store: list[Tensor] = []

    def hook(module, args, output) -> None:
        store.append(output[0] if isinstance(output, (tuple, list)) else output)

    handle = None if layer is None else decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            yield store
    finally:
        if handle is not None:
            handle.remove()
        for module, training in modes:
            module.training = training

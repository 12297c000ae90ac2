"""Teacher-forced scoring: the log-probability of chosen tokens, logits only where scored.

One batched forward serves every held-out measurement: the item NLL of the STS callback
(:func:`~sts_lightning.monitor.evaluation.item_losses`), the experiment's answer-level scores
(:func:`~sts_lightning.monitor.answer_scores.score_choices`) and the SFT loss
(:func:`scored_logits`). Position ``t`` predicts token ``t + 1``, so a target mask over tokens
is shifted one step left to select the logits that predict them, and the vocabulary projection
runs at those positions only.

Rows of a batch often begin alike: a chat template's system prompt and turn header are the same
tokens in every row (24 of SmolLM2's ~100-token items). Where they come before anything read,
:func:`scored_logits` runs them once and the rest of every row on their key-value cache
(:func:`shared_prefix_length`), with gradients flowing through the cache when training: the
same function, computed on 15-35 % fewer tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from sts_lightning.data.batching import LENGTH_MULTIPLE, padded_length

__all__ = [
    "pad_batch",
    "scored_logits",
    "scoring_pass",
    "shared_prefix_length",
    "target_logprobs",
]


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


MIN_SHARED_PREFIX = 8
"""Shortest shared prefix that is run once for a batch: below it, the extra forward call costs
about what the tokens it saves do."""


def shared_prefix_length(input_ids: Tensor, attention_mask: Tensor | None, needed: Tensor) -> int:
    """Leading tokens that every row has, identical and unmasked, before any position read.

    Args:
        input_ids: ``(B, T)`` token ids.
        attention_mask: ``(B, T)``; ``None`` (packed rows) shares nothing.
        needed: ``(B, T)`` bool, positions whose output (logits or a hidden state) is read: the
            prefix ends before the first of them in any row.

    Returns:
        The prefix length ``P``; 0 when shorter than :data:`MIN_SHARED_PREFIX`, for a single
        row, or when nothing is read.

    Example:
        >>> ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]])
        >>> needed = torch.zeros_like(ids, dtype=torch.bool)
        >>> needed[:, 9] = True
        >>> shared_prefix_length(ids, torch.ones_like(ids), needed)
        9
        >>> needed[1, 5] = True  # a read at position 5: too short to share
        >>> shared_prefix_length(ids, torch.ones_like(ids), needed)
        0
    """
    if attention_mask is None or input_ids.shape[0] < 2 or not needed.any():
        return 0
    alike = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0) & ~needed.any(0)
    prefix = int(alike.long().cumprod(0).sum())  # the leading run
    return prefix if prefix >= MIN_SHARED_PREFIX else 0


def _shares_prefix(model) -> bool:
    """Whether one prefix forward may stand for every row: no dropout draws a mask per row
    (a module's or the attention's own), no gradient checkpointing (it turns the cache off)."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5
    if checkpointing is None:
        checkpointing = getattr(model, "is_gradient_checkpointing", False)
    if checkpointing:
        return False
    if not model.training:
        return True
    config = getattr(model, "config", None)
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return False
    return not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def _rest(input_ids: Tensor, attention_mask: Tensor, positions: Tensor, prefix: int):
    """``(ids, positions)`` of every row after the prefix, as wide as the longest row's rest
    rounded up to :data:`LENGTH_MULTIPLE` (few bf16 kernel shapes), and the attention mask over
    prefix and rest."""
    width = padded_length(int(attention_mask.sum(1).max()) - prefix, LENGTH_MULTIPLE)
    extra = max(0, prefix + width - input_ids.shape[1])

    def rest(x: Tensor) -> Tensor:
        return F.pad(x, (0, extra), value=0)[:, prefix : prefix + width]

    mask = F.pad(attention_mask, (0, extra), value=0)[:, : prefix + width]
    return rest(input_ids), mask, rest(positions)


def _forward(model, input_ids, attention_mask, positions, position_ids=None, needed=None):
    """``(logits (N, V) at positions, start)``: ``start`` is the shared prefix run once
    (:func:`shared_prefix_length`; 0: one plain forward), so a layer hook's last output covers
    columns ``start ..`` of the batch."""
    if position_ids is None and _shares_prefix(model):
        reads = positions if needed is None else positions | needed.to(positions.device)
        prefix = shared_prefix_length(input_ids, attention_mask, reads)
        if prefix:
            ids, mask, rest = _rest(input_ids, attention_mask, positions, prefix)
            try:
                head = model(input_ids=input_ids[:1, :prefix], use_cache=True, logits_to_keep=1)
                cache = getattr(head, "cache", None) or getattr(head, "past_key_values", None)
                cache.batch_repeat_interleave(len(input_ids))  # differentiable copies
                out = model(
                    input_ids=ids, attention_mask=mask, cache=cache, logits_to_keep=rest
                ).logits
                return (out[rest] if out.dim() == 3 else out), prefix
            except (TypeError, AttributeError, IndexError):
                pass  # a model without a cache or a mask `logits_to_keep`: the plain forward
    return _plain(model, input_ids, attention_mask, positions, position_ids), 0


def _plain(model, input_ids, attention_mask, positions, position_ids=None) -> Tensor:
    """Logits ``(N, V)`` at ``positions`` of one forward over the whole batch."""
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
    takes no mask, as in older transformers) falls back to full logits, selected here. A
    prefix that every row shares before its first scored position runs once
    (:func:`shared_prefix_length`; not with dropout or gradient checkpointing).
    ``position_ids`` ``(B, T)`` of packed rows (``attention_mask`` ``None``) keep their examples
    apart (:mod:`sts_lightning.data.packing`).
    """
    return _forward(model, input_ids, attention_mask, positions, position_ids)[0]


_ROWS = 512
"""Positions per fp32 log-softmax in :func:`target_logprobs` (~100 MB at a 49k vocabulary)."""


def target_logprobs(
    model,
    ids: Tensor,
    mask: Tensor,
    targets: Tensor,
    store: list[Tensor] | None = None,
    reads: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Log-probability of every target token given its prefix, in one forward.

    Args:
        model: A causal LM.
        ids: ``(B, T)`` token ids (on any device; moved to the model's).
        mask: ``(B, T)`` attention mask.
        targets: ``(B, T)`` bool, the tokens to score; position 0 has no context and must be
            False.
        store: A :func:`scoring_pass` store, with ``reads``: also return its layer's hidden
            state at ``reads``.
        reads: ``(B, T)`` bool, the positions whose hidden state is returned.

    Returns:
        ``(logp, logits, rows)``: ``(N,)`` float64 log-probabilities on the CPU, in ``(B, T)``
        order of the ``N`` targets; the logits ``(N, V)`` that predicted them (on the model's
        device, in the forward's dtype: bf16 under bf16 autocast); with ``store``, the
        ``(n_reads, d_model)`` fp32 hidden rows at ``reads`` on the CPU, in ``(B, T)`` order
        (else ``None``).
    """
    if targets[:, :1].any():
        raise ValueError("`targets` must be False at position 0: the first token has no context")
    device = next(model.parameters()).device
    predictors = F.pad(targets[:, 1:], (0, 1), value=False)  # position t predicts t + 1
    if store is not None:
        store.clear()
    needed = reads if store is not None else None  # hidden states read there
    logits, start = _forward(
        model, ids.to(device), mask.to(device), predictors.to(device), needed=needed
    )
    wanted = ids[targets].to(device)
    # fp32 log-softmax in row chunks: whole-item scoring keeps every content position, and one
    # fp32 copy plus its log-softmax would be two (N, V) tensors (2.4 GB at N = 6,000).
    logp = torch.cat([
        -F.cross_entropy(logits[i : i + _ROWS].float(), wanted[i : i + _ROWS], reduction="none")
        for i in range(0, len(wanted), _ROWS)
    ]) if len(wanted) else logits.new_zeros(0, dtype=torch.float32)  # fmt: skip
    rows = None
    if store is not None and reads is not None:
        hidden = store[-1]  # the last forward's (a fallback may have run twice)
        # Its columns start after the shared prefix and may run past the batch's (padding).
        columns = F.pad(reads, (0, max(0, start + hidden.shape[1] - reads.shape[1])))
        rows = hidden[columns[:, start : start + hidden.shape[1]].to(hidden.device)]
        rows = rows.float().cpu()
    return logp.double().cpu(), logits, rows


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

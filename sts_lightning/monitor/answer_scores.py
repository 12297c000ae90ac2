"""Answer-level scores of choice items: option log-probabilities, margin, accuracy, NLLs.

For an item with options k = 1..K, ``logp(k)`` is the summed log-probability of option k's
answer tokens (its letter for listed items, its text for code) after the shared context,
teacher-forced. The **choice margin** of an item is

    margin = logp(correct) − log Σ_{k ≠ correct} exp(logp(k))

the log-odds of the correct option against the others put together: the ``logit`` of the
correct option's probability normalised over the options, ``p̂ = softmax(logp)[correct]``,
since ``margin = log p̂ − log(1 − p̂)``. Adding one constant
to every option's log-probability leaves it unchanged, so the generic damage of a fine-tune
that moves the likelihood of any answer alike cancels; what remains is whether the model
prefers the right answer. Unlike ``p̂`` (bounded, flat near 0 and 1) the margin is linear in
log-odds, so a change is seen equally well whether the model is confidently right or wrong.

Each item also gets its accuracy (``argmax logp == correct``), the raw answer NLL
(``−logp(correct)``, moved by generic damage) and the NLL of its content tokens (question and
answer of the correct option's sequence, template tokens excluded): the whole-item loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from sts_lightning.data.batching import LENGTH_MULTIPLE
from sts_lightning.data.choice_format import EncodedChoice
from sts_lightning.monitor.teacher_forcing import pad_batch, scoring_pass, target_logprobs

__all__ = ["ChoiceScores", "average_rotations", "choice_margin", "score_choices"]


def choice_margin(option_logp: Tensor, correct: Tensor) -> Tensor:
    """Log-odds of the correct option against all the others, per item.

    Args:
        option_logp: ``(n_items, K)`` summed log-probability of each option's answer; ``-inf``
            past an item's last option (items with fewer options).
        correct: ``(n_items,)`` index of the correct option.

    Returns:
        ``(n_items,)`` ``logp[correct] − logsumexp(logp[others])``; NaN for an item with no
        other option.

    Example:
        >>> logp = torch.tensor([[-1.0, -2.0, -2.0], [-3.0, -1.0, float("-inf")]])
        >>> choice_margin(logp, torch.tensor([0, 1])).round(decimals=4)
        tensor([0.3069, 2.0000])
    """
    if option_logp.dim() != 2 or correct.shape != option_logp.shape[:1]:
        raise ValueError(
            f"`option_logp` must be (n_items, K) and `correct` (n_items,), got "
            f"{tuple(option_logp.shape)} and {tuple(correct.shape)}"
        )
    rows = torch.arange(len(correct))
    others = option_logp.clone()
    others[rows, correct] = float("-inf")
    rest = torch.logsumexp(others, dim=1)  # -inf where there is no other option
    margin = option_logp[rows, correct] - rest
    return torch.where(torch.isinf(rest), torch.full_like(margin, float("nan")), margin)


@dataclass
class ChoiceScores:
    """One model's scores of one domain's choice items."""

    option_logp: Tensor
    """``(n_items, K)`` float64: summed log-prob of each option's answer; ``-inf`` padding."""
    correct: Tensor
    """``(n_items,)`` int64: index of the correct option."""
    answer_tokens: Tensor
    """``(n_items,)`` int64: tokens of the correct option's answer."""
    item_nll: Tensor
    """``(n_items,)`` float64: summed NLL of each item's content tokens (correct option)."""
    item_tokens: Tensor
    """``(n_items,)`` int64: content tokens scored per item (position 0 has no context)."""
    rows: Tensor | None = None
    """``(n_rows, d_model)`` float32: layer-L residual rows of the content tokens (special tokens
    excluded), in item then position order; ``None`` without a ``layer``."""

    @property
    def margin(self) -> Tensor:
        """``(n_items,)`` :func:`choice_margin`."""
        return choice_margin(self.option_logp, self.correct)

    @property
    def accurate(self) -> Tensor:
        """``(n_items,)`` bool: the correct option has the highest log-prob (first on ties)."""
        return self.option_logp.argmax(1) == self.correct

    @property
    def answer_nll(self) -> Tensor:
        """``(n_items,)`` float64: NLL of the correct option's answer tokens."""
        return -self.option_logp[torch.arange(len(self.correct)), self.correct]


def average_rotations(
    scores: ChoiceScores, rotated: ChoiceScores, entries: Sequence[tuple[int, int]]
) -> ChoiceScores:
    """``scores`` with each option's log-prob averaged over the item and its option rotations.

    A model's preference for a letter adds ``b(letter)`` to whichever option is listed under
    it. Over the rotations of :func:`~sts_lightning.data.choices.rotations` every option sits
    under every letter once, so the average is ``s(option) + mean(b)``: the same constant for
    every option, which :func:`choice_margin` ignores. What is left is the preference for the
    options' content. Item NLL, token counts and rows stay those of the original listing.

    Args:
        scores: The items as listed, ``(n_items, K)``.
        rotated: Their rotations, flat: entry ``f`` is rotation ``entries[f] = (item, j)``,
            which lists option ``(o' + j) mod K`` under letter ``o'``.
        entries: ``(item index, rotation j)`` of each row of ``rotated``.

    Example:
        >>> bias = torch.tensor([2.0, 0.0, -2.0])  # the model likes "A"
        >>> content = torch.tensor([-1.0, -2.0, -3.0])  # ... and option 0
        >>> logp = lambda j: content.roll(-j) + bias  # rotation j lists option o' + j at o'
        >>> one = lambda x: ChoiceScores(x[None], torch.tensor([0]), *[torch.zeros(1)] * 3)
        >>> flat = ChoiceScores(torch.stack([logp(1), logp(2)]), torch.tensor([2, 1]),
        ...                     *[torch.zeros(2)] * 3)
        >>> average_rotations(one(logp(0)), flat, [(0, 1), (0, 2)]).option_logp
        tensor([[-1., -2., -3.]])
    """
    if len(entries) != len(rotated.correct):
        raise ValueError(f"`entries` has {len(entries)} rows, `rotated` {len(rotated.correct)}")
    total = scores.option_logp.clone()
    count = torch.ones(len(scores.correct), dtype=total.dtype)
    for f, (i, j) in enumerate(entries):
        k = int(torch.isfinite(scores.option_logp[i]).sum())
        if (scores.correct[i] - j) % k != rotated.correct[f]:
            raise ValueError(f"rotation {f} is not rotation {j} of item {i}")
        total[i, :k] += rotated.option_logp[f, (torch.arange(k) - j) % k]
        count[i] += 1
    return replace(scores, option_logp=total / count[:, None])


def _jobs(items: Sequence[EncodedChoice]) -> list[tuple[int, int, bool]]:
    """``(item, option, is_correct)`` of every sequence to forward, longest first.

    The correct option's sequence is always run (it carries the item NLL and the rows); the
    others only when an option has several tokens (otherwise one forward scores every option).
    """
    jobs = []
    for i, e in enumerate(items):
        jobs.append((i, e.correct, True))
        if not e.single_token:
            jobs += [(i, k, False) for k in range(len(e.sequences)) if k != e.correct]
    return sorted(jobs, key=lambda j: -len(items[j[0]].sequences[j[1]]))  # less padding


def _batch_tensors(items, batch, pad_token_id: int):
    """Padded ids ``(B, T)``, mask, and the answer / content target masks of one batch."""
    sequences = [items[i].sequences[k] for i, k, _ in batch]
    ids, mask = pad_batch(sequences, pad_token_id, LENGTH_MULTIPLE)  # bf16 kernel shapes bounded
    answer = torch.zeros_like(ids, dtype=torch.bool)  # tokens whose log-prob is the option's
    content = torch.zeros_like(answer)  # tokens of the item NLL (correct option only)
    for b, (i, k, is_correct) in enumerate(batch):
        answer[b, slice(*items[i].answer_spans[k])] = True
        if is_correct:
            for start, end in items[i].content_spans:
                content[b, max(start, 1) : end] = True  # position 0 has no context
    return ids, mask, answer, content


def _score_batch(
    model, items, batch, out: dict, pad_token_id: int, store, excluded, item_nll: bool
) -> None:
    """One forward over ``batch``; adds its scores to ``out``'s per-item accumulators."""
    ids, mask, answer, content = _batch_tensors(items, batch, pad_token_id)
    targets = answer | content if item_nll else answer  # logits only where something is read
    store.clear()
    token_logp, logits = target_logprobs(model, ids, mask, targets)  # (N,) in (B, T) order
    where = targets.nonzero()  # (N, 2): (b, t) of each scored token
    is_answer, is_content = answer[targets], content[targets]
    logit_row = torch.full(ids.shape, -1, dtype=torch.long)  # (b, t) -> row of `logits`
    logit_row[F.pad(targets[:, 1:], (0, 1), value=False)] = torch.arange(len(where))
    for b, (i, k, is_correct) in enumerate(batch):
        mine = where[:, 0] == b
        out["logp"][i, k] = token_logp[mine & is_answer].sum()
        if not is_correct:
            continue
        out["nll"][i] = -token_logp[mine & is_content].sum() if item_nll else float("nan")
        out["tokens"][i] = int(content[b].sum())
        e = items[i]
        if e.single_token:  # every option's token is scored at the same position
            start = e.answer_spans[0][0]
            dist = torch.log_softmax(logits[logit_row[b, start - 1]].double(), -1).cpu()
            for j, seq in enumerate(e.sequences):
                out["logp"][i, j] = dist[seq[start]]
        if store:  # the last forward's hidden state (a fallback ran twice)
            keep = content[b] & ~torch.isin(ids[b], excluded)
            out["rows"][i] = store[-1][b][keep.to(store[-1].device)].float().cpu()


@torch.no_grad()
def score_choices(
    model: torch.nn.Module,
    encoded: Mapping[str, Sequence[EncodedChoice]],
    *,
    pad_token_id: int,
    layer: int | None = None,
    exclude_token_ids: Sequence[int] = (),
    batch_size: int = 8,
    item_nll: bool = True,
) -> dict[str, ChoiceScores]:
    """Option log-probs, item NLL and (optionally) layer rows of every named set, teacher-forced.

    Args:
        model: A causal LM (restored to its train/eval mode afterwards).
        encoded: ``{name: encoded items}`` from
            :func:`~sts_lightning.data.choice_format.encode_choices`.
        pad_token_id: Fills padding (masked out).
        layer: Also keep the residual rows of the content tokens after this decoder layer;
            ``None``: scores only.
        exclude_token_ids: Token ids left out of ``rows`` (special tokens).
        batch_size: Sequences per forward (sorted by length, so little padding).
        item_nll: Also score every content token (the item NLL); ``False``: logits only at
            the answers (on long items most of a pass's time and memory saved), ``item_nll``
            NaN (``item_tokens`` is still counted).

    Returns:
        ``{name: ChoiceScores}``, items in the given order.
    """
    excluded = torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)
    out = {}
    with scoring_pass(model, layer) as store:
        for name, items in encoded.items():
            n, width = len(items), max((len(e.sequences) for e in items), default=1)
            acc = {
                "logp": torch.full((n, width), float("-inf"), dtype=torch.float64),
                "nll": torch.zeros(n, dtype=torch.float64),
                "tokens": torch.zeros(n, dtype=torch.long),
                "rows": [None] * n,
            }
            jobs = _jobs(items)
            for first in range(0, len(jobs), batch_size):
                batch = jobs[first : first + batch_size]
                _score_batch(model, items, batch, acc, pad_token_id, store, excluded, item_nll)
            out[name] = ChoiceScores(
                option_logp=acc["logp"],
                correct=torch.tensor([e.correct for e in items], dtype=torch.long),
                answer_tokens=torch.tensor(
                    [e.answer_spans[e.correct][1] - e.answer_spans[e.correct][0] for e in items],
                    dtype=torch.long,
                ),
                item_nll=acc["nll"],
                item_tokens=acc["tokens"],
                rows=torch.cat(acc["rows"]) if layer is not None and n else None,
            )
    return out

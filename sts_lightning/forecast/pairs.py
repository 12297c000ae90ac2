"""Which queries a forecast pass reads: a seeded choice up to a token budget, encoded when read.

:func:`select_pairs` encodes each candidate query plain (base) and after demonstrations (ICL) to
count its span tokens and measure its ICL length, then keeps only what it needs to encode the
pair again: the example's index and its demonstrations' indices. A :class:`PairPlan` is the
chosen queries in run order (longest ICL prompt first, so similar lengths batch together); the
engine reads it batch by batch, so no more than one batch of encoded prompts exists at a time.
Holding every encoded pair instead grows with the budget (Python heap held after selection, one
demonstration: 1.7 MB at 10k tokens, 16 MB at 100k; the plan: 0.2 and 0.4 MB).
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Sequence
from typing import Any, overload

from sts_lightning.data.prompts import EncodedPrompt, Example, build_pairs, encode_example
from sts_lightning.forecast.config import PredictConfig

__all__ = ["Pair", "PairPlan", "select_pairs"]

Pair = tuple[EncodedPrompt, EncodedPrompt]
"""A ``(base, icl)`` encoding of one query."""


class PairPlan(Sequence[Pair]):
    """The chosen ``(base, icl)`` pairs of a pass, in run order, encoded on access.

    Each access encodes the pair again, to the same ids as :func:`build_pairs` gave at selection
    (same example, same demonstrations in the same order). :meth:`side` reads one prompt of
    each pair only (the base pass does not encode the ICL prompts).

    Args:
        tokenizer: The tokenizer the pairs were selected with.
        examples: The queries' examples.
        pool: Where the demonstrations come from.
        encode_kwargs: Keyword arguments of :func:`encode_example`.
        queries: ``(index into examples, demonstration indices into pool)`` in run order.
    """

    def __init__(
        self,
        tokenizer,
        examples: Sequence[Example],
        pool: Sequence[Example],
        encode_kwargs: dict[str, Any],
        queries: Sequence[tuple[int, tuple[int, ...]]],
    ) -> None:
        self.tokenizer, self.examples, self.pool = tokenizer, examples, pool
        self.encode_kwargs = dict(encode_kwargs)
        self.n_demos = len(queries[0][1]) if queries else 0
        # Flat int64 arrays: 8 bytes per query and per demonstration, whatever the prompt length.
        self._index = array("q", (i for i, _ in queries))
        self._demos = array("q", (j for _, demos in queries for j in demos))

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> Pair: ...
    @overload
    def __getitem__(self, i: slice) -> list[Pair]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.encode(i, "base"), self.encode(i, "icl")

    def encode(self, i: int, which: str) -> EncodedPrompt:
        """The ``which`` (``"base"`` or ``"icl"``) prompt of the ``i``-th pair, encoded now."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair {i} of a plan of {len(self)}")
        i %= len(self)
        example = self.examples[self._index[i]]
        if which == "base":
            return encode_example(self.tokenizer, example, **self.encode_kwargs)
        chosen = tuple(self._demos[i * self.n_demos : (i + 1) * self.n_demos])
        demos = [self.pool[j] for j in chosen]
        icl = encode_example(self.tokenizer, example, demos, **self.encode_kwargs)
        icl.demo_indices = chosen
        return icl

    def side(self, which: str) -> _Side:
        """The ``"base"`` or ``"icl"`` prompts alone, as a lazily encoded sequence."""
        return _Side(self, which)


class _Side(Sequence[EncodedPrompt]):
    """One prompt of each pair of a :class:`PairPlan`; slices encode their prompts only."""

    def __init__(self, plan: PairPlan, which: str) -> None:
        self.plan, self.which = plan, which

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.plan.encode(i, self.which)


def select_pairs(
    tokenizer,
    examples: Sequence[Example],
    n_demos: int,
    span: str,
    budget: int,
    config: PredictConfig,
    exclude: set[int],
    *,
    seed: int | None = None,
    demo_pool: Sequence[Example] | None = None,
) -> tuple[PairPlan, int]:
    """Seeded choice of examples until ``budget`` span tokens; returns the plan and the count.

    The queries depend only on ``examples``, the seed (default ``config.seed``) and the budget;
    ``demo_pool`` (default: ``examples``) only changes what precedes them in the ICL prompt.
    Span tokens in ``exclude`` are not counted. Memory: the plan's indices, not the prompts.
    """
    seed = config.seed if seed is None else seed
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    pool = examples if demo_pool is None else demo_pool
    kw = dict(system_prompt=config.system_prompt, use_chat_template=config.use_chat_template)
    chosen, n_tokens, chunk = [], 0, 32  # (ICL length, example index, demonstrations)
    for first in range(0, len(order), chunk):
        indices = order[first : first + chunk]
        pairs = build_pairs(
            tokenizer, [examples[i] for i in indices], n_demos, seed=seed, demo_pool=pool, **kw
        )
        for index, (base, icl) in zip(indices, pairs, strict=True):
            start, end = base.span(span)
            n_tokens += sum(t not in exclude for t in base.input_ids[start:end])
            chosen.append((len(icl.input_ids), index, icl.demo_indices))
            if n_tokens >= budget:
                break
        if n_tokens >= budget:
            break
    # Longest ICL prompts first: similar lengths batch together, less padding. The sort is
    # stable: equal lengths keep the order of selection.
    chosen.sort(key=lambda c: -c[0])
    return PairPlan(tokenizer, examples, pool, kw, [(i, d) for _, i, d in chosen]), n_tokens

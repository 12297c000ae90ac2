"""Held-out items as choices: a question, its options and the index of the correct one.

The realised change of a domain is measured on the *answer*, not on the whole item's text: a
fine-tune moves the likelihood of every answer phrasing in every domain, and a metric that such
generic damage moves measures format, not capability. A choice item lets the answer be scored
against its alternatives (:func:`~sts_lightning.monitor.answer_scores.choice_margin`).

Three kinds of items, all from the fixed "heldout" half of
:func:`~sts_lightning.data.domains.load_domain` (so the pre-registered split is unchanged):

- **MMLU domains**: the question, its four options and the correct index, with the options
  *listed* in the prompt and scored by their letter (the MMLU standard: one token per option,
  so every option is scored after the very same prompt);
- **code** (HumanEval): the canonical solution against a matched incorrect one, a deterministic
  one-site mutation of it (:func:`mutate_code`), both scored as text after the same prompt;
- **prompt/answer pairs** (``domain_files``): the correct answer listed among up to three
  other answers of the same domain (:func:`pair_choices`).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sts_lightning.data.domains import load_domain
from sts_lightning.data.mmlu import format_mmlu, mmlu_rows
from sts_lightning.data.prompts import Example

__all__ = [
    "LETTERS",
    "ChoiceItem",
    "load_choice_domain",
    "mutate_code",
    "pair_choices",
    "rotations",
]

LETTERS = "ABCDEFGH"
"""Option labels of listed items, in order."""


@dataclass(frozen=True)
class ChoiceItem:
    """One held-out item: a question and its options, one of them correct."""

    question: str
    """The question (MMLU), the function signature and docstring (code), or the prompt."""
    options: tuple[str, ...]
    """The options' texts, 1 to 8 (a single option has no margin, only likelihoods)."""
    correct: int
    """Index of the correct option in ``options``."""
    listed: bool = True
    """``True``: the options are listed in the prompt under letters and each is scored by its
    letter; ``False``: each option is scored as the text that continues the question."""
    topic: str = ""
    """MMLU subject, or empty."""

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"`question` must be a non-empty string, got {self.question!r}")
        if not 1 <= len(self.options) <= len(LETTERS):
            raise ValueError(f"`options` must hold 1 to {len(LETTERS)} texts, got {self.options}")
        if any(not isinstance(o, str) or not o.strip() for o in self.options):
            raise ValueError(f"`options` must be non-empty strings, got {self.options!r}")
        if not isinstance(self.correct, int) or not 0 <= self.correct < len(self.options):
            raise ValueError(
                f"`correct` must index `options` (0..{len(self.options) - 1}), got {self.correct!r}"
            )


def rotations(item: ChoiceItem) -> list[ChoiceItem]:
    """The item with its listed options rotated by 1, 2, … K − 1 places (text items: none).

    Rotation ``j`` lists ``options[j:] + options[:j]``, so original option ``o`` sits under
    letter ``(o − j) mod K``; over the item and its rotations every option appears under every
    letter once (a Latin square), which lets a preference for a letter be averaged out
    (:func:`~sts_lightning.monitor.answer_scores.average_rotations`).

    Example:
        >>> [(r.options, r.correct) for r in rotations(ChoiceItem("Q?", ("a", "b", "c"), 1))]
        [(('b', 'c', 'a'), 0), (('c', 'a', 'b'), 2)]
    """
    if not item.listed:
        return []
    k = len(item.options)
    return [
        ChoiceItem(
            item.question,
            item.options[j:] + item.options[:j],
            (item.correct - j) % k,
            item.listed,
            item.topic,
        )
        for j in range(1, k)
    ]


@functools.cache
def _mmlu_items() -> dict[Example, ChoiceItem]:
    """Every MMLU row as a choice item, keyed by the domain text it was formatted into."""
    out: dict[Example, ChoiceItem] = {}
    for row in mmlu_rows():
        options = tuple(str(row[f"answer_{x}"]) for x in "abcd")
        correct = "ABCD".index(row["correct_answer"])
        out[format_mmlu(row)] = ChoiceItem(
            row["question"].strip(), options, correct, topic=row["topic"]
        )
    return out


# One-site mutations that keep a solution's length and style but (almost always) break it.
_MUTATIONS = (
    (r" == ", " != "),
    (r" != ", " == "),
    (r" <= ", " < "),
    (r" >= ", " > "),
    (r" < ", " <= "),
    (r" > ", " >= "),
    (r" \+ ", " - "),
    (r" - ", " + "),
    (r"\band\b", "or"),
    (r"\bor\b", "and"),
    (r"\bTrue\b", "False"),
    (r"\bFalse\b", "True"),
    (r"(?<![\w.])0(?![\w.])", "1"),
    (r"(?<![\w.])1(?![\w.])", "2"),
    (r"(?<![\w.])2(?![\w.])", "1"),
    (r"\bmin\(", "max("),
    (r"\bmax\(", "min("),
    (r"\[::-1\]", ""),
    (r" % ", " // "),
    (r" \* ", " + "),
    (r" / ", " * "),
    (r"\bnot in\b", "in"),
    (r"\.lower\(\)", ".upper()"),
    (r"\.upper\(\)", ".lower()"),
    (r"\.swapcase\(\)", ".lower()"),
    (r"\.startswith\(", ".endswith("),
    (r"\.endswith\(", ".startswith("),
    (r"\bisinstance\(", "not isinstance("),
    (r"\bsorted\(", "list("),
    (r"\bset\(", "list("),
    (r"\babs\(", "("),
    (r"\b(''|\"\")\.join", "' '.join"),
)
# Used only where no rule above applies: negate the first return value.
_FALLBACK = ((r"\breturn (?!not\b)", "return not "),)


def mutate_code(solution: str) -> str:
    """A matched incorrect solution: one operator, boolean, constant or call changed.

    Every site where a rule of ``_MUTATIONS`` applies is a candidate (a solution with none has
    its ``return`` value negated); one is picked by a hash of
    the solution (deterministic, independent of any seed). Only tokens from the site onward
    differ, so a margin between the two compares them on what makes the solution correct.

    Args:
        solution: Python source.

    Returns:
        The mutated source, different from ``solution``.

    Raises:
        ValueError: If no rule applies (not even a ``return`` to negate).

    Example:
        >>> mutate_code("    return a == b\\n")
        '    return a != b\\n'
    """
    for rules in (_MUTATIONS, _FALLBACK):
        sites = [(m.start(), m.end(), new) for p, new in rules for m in re.finditer(p, solution)]
        if sites:
            break
    else:
        raise ValueError(f"`solution` has no site to mutate: {solution[:80]!r}")
    sites.sort()  # one order whatever the rules' order
    pick = int(hashlib.sha256(solution.encode("utf-8")).hexdigest(), 16) % len(sites)
    start, end, new = sites[pick]
    return solution[:start] + new + solution[end:]


def pair_choices(examples: Sequence[Example], n_options: int = 4) -> list[ChoiceItem]:
    """Prompt/answer pairs as listed choices: the answer among other answers of the same set.

    The distractors are distinct answers of the other examples, up to ``n_options - 1``, and
    the correct letter's position is drawn; both from a hash of the example, so an item is the
    same whatever the order of ``examples``. An example whose answer is the only one in the set
    becomes a single-option item (likelihoods, no margin).

    Args:
        examples: Pairs with answers.
        n_options: Options per item, 2 to 8.

    Example:
        >>> items = pair_choices([Example("1+1?", "2"), Example("2+1?", "3")], n_options=2)
        >>> [sorted(i.options) for i in items], [i.options[i.correct] for i in items]
        ([['2', '3'], ['2', '3']], ['2', '3'])
    """
    if not isinstance(n_options, int) or not 2 <= n_options <= len(LETTERS):
        raise ValueError(f"`n_options` must be an int in [2, {len(LETTERS)}], got {n_options!r}")
    missing = [i for i, e in enumerate(examples) if e.answer is None]
    if missing:
        raise ValueError(f"`examples` {missing[:5]} have no answer; choices need one")
    answers = sorted({e.answer for e in examples})  # one order, whatever the examples' order
    out = []
    for example in examples:
        key = f"sts-choices/{example.prompt}\x00{example.answer}".encode()
        rng = random.Random(hashlib.sha256(key).hexdigest())
        others = [a for a in answers if a != example.answer]
        options = rng.sample(others, min(n_options - 1, len(others)))
        correct = rng.randrange(len(options) + 1)
        options.insert(correct, example.answer)
        out.append(ChoiceItem(example.prompt, tuple(options), correct))
    return out


def load_choice_domain(name: str, *, n: int | None = None, seed: int = 0) -> list[ChoiceItem]:
    """Held-out items of a built-in domain as choice items.

    Args:
        name: A built-in domain (:data:`~sts_lightning.data.domains.DOMAINS`).
        n: How many items; ``None`` for the whole "heldout" half.
        seed: Picks and orders the ``n`` items (as :func:`load_domain` does).

    Returns:
        MMLU domains: listed 4-option items; ``code``: 2-option text items (canonical solution
        first, then its mutation).

    Example:
        >>> item = load_choice_domain("physics", n=1)[0]
        >>> len(item.options), item.listed
        (4, True)
    """
    examples = load_domain(name, split="heldout", n=n, seed=seed)
    if name == "code":
        return [ChoiceItem(e.prompt, (e.answer, mutate_code(e.answer)), 0, False) for e in examples]
    table = _mmlu_items()
    return [table[e] for e in examples]

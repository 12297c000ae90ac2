"""A pre-registered panel of skills the model can do, the source tasks, and their near/far labels.

On MMLU a 135M model answers at chance and every fine-tune changes every domain alike. The
skills panel measures domains the model has something to lose on: reasoning-gym generators
(offline, seeded) at easy settings, each item a question with a short oracle answer, scored at
the answer through the chat template (answer NLL per token; exact match with the generator's
checker, :func:`score_skill_answer`).

Fixed here before any fine-tune reads them, and not changed after seeing outcomes:

- :data:`SKILLS`: the panel, 13 skills: arithmetic, counting, sorting and comparing, logic,
  reading and number patterns. None is a source task's generator.
- :data:`SKILL_TASKS`: the source tasks, four kinds: ``arithmetic`` (basic_arithmetic: maths),
  ``family`` (family_relationships: verbal kinship), ``syllogism`` (categorical logic, Yes/No)
  and ``word_sorting`` (sorting words); ``leg_counting`` (maths, a word problem) joined later
  for the quick README design, where it replaces arithmetic.
- :data:`NEAR_FAR`: per task, its *near* panel skills (the same skill through another generator
  or format) and its *far* ones (unrelated): a positive control for every forecast.

**Splits**: ``"score"`` (what a forecast reads) and ``"heldout"`` (what is measured). A salted
SHA-256 of the question text picks an item's split, whatever seed drew it: they never share a
question; ``seed`` only picks which items are drawn.

**Base-model floor check** (``benchmarks/skills_floor.py``: SmolLM2-135M-Instruct, fp32, chat
template, 8 held-out items per candidate, before any fine-tune). Rule, fixed before measuring: a
candidate is at floor, and dropped, when its answer NLL is at least 2.0 nats per answer token
*and* none of its greedy completions contains the oracle answer (the model answers in
sentences, so the whole completion is not compared). Kept, NLL (answer found in n/8): chain_sum
3.50 (1), products 2.66 (3), gcd 3.44 (4), lcm 3.69 (5), letter_counting 4.20 (1),
number_sorting 1.25, number_format 0.99, number_filtering 1.54, knights_knaves 0.87 (these four
below the bound: not generated), circuit_logic 4.89 (4; a 0/1 answer: near chance), ransom_note
2.01 (5), needle_haystack 2.56 (1), number_sequence 3.27 (2). Dropped at floor (0/8): leg_counting
4.37 (1-2 kinds, 1-3 each), aiw 6.71, count_bits 4.69 (n <= 1000), count_primes 4.87 (n <= 60),
simple_equations 4.00, decimal_chain_sum 2.47, word_sequence_reversal 3.28 (3-4 words; 2 words:
4.00), letter_jumble 7.63, caesar_cipher 5.35, palindrome_generation 5.40, sentence_reordering
3.23, spell_backward 6.89 (3-4 letters), isomorphic_strings 4.29, word_sorting 3.33. No
string-manipulation generator tried is above floor for this model: the panel's string skills
are letter_counting and ransom_note, which read strings rather than rewrite them.
``word_sorting``, at floor, is a source task instead (a fine-tune can still learn it).
"""

from __future__ import annotations

import hashlib
from typing import Any

from sts_lightning.config import positive_int
from sts_lightning.data.prompts import Example
from sts_lightning.data.training_sets import (
    TRAINING_SETS,
    TrainingTask,
    create_generator,
    score_generated_answer,
)

__all__ = ["NEAR_FAR", "SKILLS", "SKILL_TASKS", "SPLITS", "load_skill", "score_skill_answer"]
__all__ += ["split_of"]

SPLITS = ("score", "heldout")
"""The forecast's items and the measurement's items, disjoint by question text."""

_ONLY = " Give only the final answer."

SKILLS: dict[str, TrainingTask] = {
    # arithmetic
    "chain_sum": TrainingTask(
        dataset="chain_sum",
        config={
            "min_terms": 2,
            "max_terms": 3,
            "min_digits": 1,
            "max_digits": 2,
            "allow_negation": False,
        },
        instruction=_ONLY,
        description="sums and differences of 2-3 numbers of <= 2 digits (arithmetic)",
    ),
    "products": TrainingTask(
        dataset="products",
        config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2},
        description="a product of two numbers of <= 2 digits (arithmetic)",
    ),
    "gcd": TrainingTask(
        dataset="gcd",
        config={"min_numbers": 2, "max_numbers": 2, "min_value": 1, "max_value": 30},
        description="greatest common divisor of two numbers <= 30 (arithmetic)",
    ),
    "lcm": TrainingTask(
        dataset="lcm",
        config={"min_numbers": 2, "max_numbers": 2, "min_value": 2, "max_value": 20},
        instruction=_ONLY,
        description="least common multiple of two numbers <= 20 (arithmetic)",
    ),
    # counting
    "letter_counting": TrainingTask(
        dataset="letter_counting",
        config={"min_words": 3, "max_words": 5},
        instruction=_ONLY,
        description="how often a letter occurs in 3-5 words (counting)",
    ),
    # sorting and comparing
    "number_sorting": TrainingTask(
        dataset="number_sorting",
        config={
            "min_numbers": 3,
            "max_numbers": 4,
            "min_decimals": 0,
            "max_decimals": 0,
            "min_value": 0,
            "max_value": 99,
        },
        description="sort 3-4 integers < 100, as a list of strings (sorting)",
    ),
    "number_format": TrainingTask(
        dataset="number_format",
        config={"min_num_candidates": 2, "max_num_candidates": 3, "min_n": 1, "max_n": 1000},
        description="the largest or smallest of 2-3 differently formatted numbers (comparison)",
    ),
    "number_filtering": TrainingTask(
        dataset="number_filtering",
        config={
            "min_numbers": 3,
            "max_numbers": 4,
            "min_decimals": 0,
            "max_decimals": 0,
            "min_value": 0,
            "max_value": 99,
        },
        description="keep the numbers of a list above/below a bound (sorting, filtering)",
    ),
    # logic
    "knights_knaves": TrainingTask(
        dataset="knights_knaves",
        config={"n_people": 2, "depth_constraint": 2, "width_constraint": 2},
        description="who of two islanders tells the truth (logic)",
    ),
    "circuit_logic": TrainingTask(
        dataset="circuit_logic",
        config={"min_terms": 2, "max_terms": 3, "min_inputs": 2, "max_inputs": 2},
        instruction=_ONLY,
        description="the output of a small boolean circuit, 0 or 1 (logic)",
    ),
    "ransom_note": TrainingTask(
        dataset="ransom_note",
        config={"max_note_length": 4, "max_magazine_length": 10},
        description="can a short note be built from a magazine's letters? True/False (logic)",
    ),
    # reading and patterns
    "needle_haystack": TrainingTask(
        dataset="needle_haystack",
        config={"min_num_statements": 3, "max_num_statements": 5},
        description="who, of 3-5 people described, has a given trait? a name (reading)",
    ),
    "number_sequence": TrainingTask(
        dataset="number_sequence",
        config={
            "min_terms": 4,
            "max_terms": 5,
            "min_value": -20,
            "max_value": 20,
            "max_complexity": 1,
        },
        instruction=_ONLY,
        description="the next number of a simple sequence (patterns)",
    ),
}
"""The skills panel by name (the domain names of the skills experiment)."""

SKILL_TASKS: dict[str, TrainingTask] = {
    "arithmetic": TRAINING_SETS["arithmetic"],
    "leg_counting": TRAINING_SETS["leg_counting"],
    "family": TRAINING_SETS["family"],
    "syllogism": TRAINING_SETS["syllogism"],
    "word_sorting": TRAINING_SETS["word_sorting"],
}
"""The source tasks of the skills experiment; none of them is in :data:`SKILLS`. Each recipe
names four of them, of four kinds: the full run arithmetic, family, syllogism and word_sorting;
the quick README run leg_counting in arithmetic's place (arithmetic failed the learned rule)."""

NEAR_FAR: dict[str, dict[str, tuple[str, ...]]] = {
    "near": {
        "arithmetic": ("chain_sum", "products", "gcd", "lcm"),
        "leg_counting": ("chain_sum", "products"),
        "family": ("needle_haystack",),
        "syllogism": ("knights_knaves", "circuit_logic"),
        "word_sorting": ("number_sorting", "number_format"),
    },
    "far": {
        "arithmetic": ("knights_knaves", "ransom_note", "needle_haystack"),
        "leg_counting": ("knights_knaves", "ransom_note", "needle_haystack"),
        "family": ("chain_sum", "products", "gcd", "number_sorting", "circuit_logic"),
        "syllogism": (
            "chain_sum",
            "products",
            "number_sorting",
            "letter_counting",
            "number_sequence",
        ),
        "word_sorting": ("chain_sum", "gcd", "knights_knaves", "needle_haystack", "circuit_logic"),
    },
}
"""Per source task: ``near`` panel skills (the same skill, another generator or format) and
``far`` ones (unrelated), for
:class:`~sts_lightning.experiment.near_far.NearFarLabels` (``NearFarLabels(**NEAR_FAR,
domains=SKILLS)``). ``family``'s one near skill is the panel's only other text about named
people with a one-word answer (``aiw``, the sibling-counting generator, is at floor)."""


def _skill(name: str) -> TrainingTask:
    if name not in SKILLS:
        raise ValueError(f"`name` must be one of the skills {list(SKILLS)}, got {name!r}")
    return SKILLS[name]


def _digest(*parts: Any) -> bytes:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()


def split_of(name: str, question: str) -> str:
    """The split a question belongs to: a salted hash of its text, independent of any seed."""
    return SPLITS[_digest("skills-split", name, question)[0] % 2]


def load_skill(name: str, n: int, split: str = "heldout", seed: int = 0) -> list[Example]:
    """``n`` distinct items of one skill from one split.

    Args:
        name: One of :data:`SKILLS`.
        n: Number of items (distinct questions).
        split: ``"score"`` (what a forecast reads) or ``"heldout"`` (what is measured); the two
            never share a question.
        seed: Which items are drawn (each seed an independent stream).

    Returns:
        Examples: the question (plus the skill's instruction) and the oracle answer.

    Example:
        >>> a = load_skill("chain_sum", 5, "score")
        >>> b = load_skill("chain_sum", 5, "heldout")
        >>> len(a), not {e.prompt for e in a} & {e.prompt for e in b}
        (5, True)
    """
    skill = _skill(name)
    positive_int("n", n)
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    budget = 6 * n + 100  # about half the draws fall in the other split; small skills repeat
    base = int.from_bytes(_digest("skills-seed", name, split, seed)[:8], "big")
    data = create_generator(skill.dataset, budget, base, **skill.config)
    items: dict[str, Example] = {}
    for i in range(budget):
        entry = data[i]
        if entry["answer"] is None or split_of(name, entry["question"]) != split:
            continue
        prompt = entry["question"].rstrip() + skill.instruction
        items.setdefault(prompt, Example(prompt=prompt, answer=str(entry["answer"])))
        if len(items) == n:
            return list(items.values())
    raise ValueError(
        f"`n`={n} is more than the {len(items)} distinct {split!r} items skill {name!r} "
        f"produced in {budget} draws"
    )


def score_skill_answer(name: str, completion: str | None, example: Example) -> float:
    """The generator's own score in ``[0, 1]`` of ``completion`` against the oracle answer.

    Only ``entry["answer"]`` is given to the checker (no metadata), so 1.0 means the answer
    matches the oracle as the generator compares them (exact match for most skills); the
    skills whose checker needs metadata are scored by exact match.

    Example:
        >>> ex = Example(prompt="Solve the following multiplication: 3 * 4.", answer="12")
        >>> score_skill_answer("products", "12", ex), score_skill_answer("products", "13", ex)
        (1.0, 0.0)
    """
    return score_generated_answer(_skill(name).dataset, completion, example)

"""Source training sets with short, checkable final answers.

Procedural reasoning-gym tasks (maths, kinship, logic) and ``mmlu_qa``, knowledge questions from
MMLU subjects reserved for it (:mod:`sts_lightning.data.mmlu_qa`). :data:`TRAINING_SETS` names
them; :func:`load_training_set` draws ``n`` distinct examples and :func:`score_training_answer`
is the task's reward for a completion. reasoning-gym is imported inside the functions that need
it (~1 s of imports).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sts_lightning.config import positive_int
from sts_lightning.data.mmlu_qa import load_mmlu_qa
from sts_lightning.data.prompts import Example

__all__ = ["NEEDS_METADATA", "TRAINING_SETS", "TrainingTask", "exact_answer_match"]
__all__ += ["create_generator", "load_training_set", "score_generated_answer"]
__all__ += ["score_training_answer"]


class _SortedLetters(frozenset):
    """A set of strings that iterates in sorted order, as do its differences: the same draws
    from ``rng.choice(list(letters))`` in every process."""

    def __iter__(self):
        return iter(sorted(frozenset.__iter__(self)))

    def __sub__(self, other):
        return _SortedLetters(frozenset.__sub__(self, other))


def create_generator(dataset: str, size: int, seed: int, **config: Any):
    """``reasoning_gym.create_dataset(dataset, size=size, seed=seed, **config)``, the same
    items in every process.

    reasoning-gym 0.1.25's ``ransom_note`` draws letters with ``rng.choice(list(a_set))``: a
    set of strings iterates in an order set by Python's per-process hash seed, so the same
    seed gave other items in each run (``PYTHONHASHSEED``). Its letters iterate in sorted
    order here. Every item is still a draw of the generator, from its seed.

    Example:
        >>> data = create_generator("ransom_note", 2, 7)
        >>> data[0]["question"] == create_generator("ransom_note", 2, 7)[0]["question"]
        True
    """
    import reasoning_gym  # lazy: ~1 s of imports

    data = reasoning_gym.create_dataset(dataset, size=size, seed=seed, **config)
    if isinstance(getattr(data, "letters", None), (set, frozenset)):
        data.letters = _SortedLetters(data.letters)
    return data


@dataclass(frozen=True)
class TrainingTask:
    """A generator (reasoning-gym, or MMLU items) and the settings that make it a source task."""

    dataset: str
    """The reasoning-gym dataset name (``reasoning_gym.create_dataset(dataset, ...)``)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the dataset's config (field names from reasoning-gym's source)."""
    instruction: str = ""
    """Appended to every question, e.g. to ask for a bare final answer."""
    drop_answers: tuple[str, ...] = ()
    """Oracle answers whose items are skipped (known-wrong labels in the generator)."""
    description: str = ""
    """One line for listings and logs."""
    source: str = "reasoning_gym"
    """Where items come from: ``reasoning_gym`` (``dataset`` names the generator) or ``mmlu``
    (:mod:`sts_lightning.data.mmlu_qa`; ``dataset`` and ``config`` are unused)."""


TRAINING_SETS: dict[str, TrainingTask] = {
    # The default difficulty (2-6 terms, up to 4 digits) is far beyond a 135M model; at 2-3 terms
    # and <= 2 digits full fine-tuning lifts exact match from 0 % to ~37 % in 40 steps.
    "arithmetic": TrainingTask(
        dataset="basic_arithmetic",
        config={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
        instruction=" Give only the final answer.",
        description="integer arithmetic, 2-3 terms of <= 2 digits (maths, STEM)",
    ),
    # Multiply and add: the number of legs of 2-3 kinds of animal (e.g. "5 woodlouses,
    # 2 leechs" -> 70). Maths with a bare number for an answer, and at floor for the base model,
    # so a fine-tune cannot lower its exact match (as SFT on arithmetic's bare sums does).
    "leg_counting": TrainingTask(
        dataset="leg_counting",
        config={"min_animals": 2, "max_animals": 3},
        instruction=" Give only the final answer.",
        description="total legs of 2-3 kinds of animal, a bare number (maths word problem)",
    ),
    # reasoning-gym 0.1.25 labels in-law questions backwards ("What is Susan to Samuel?" ->
    # "father-in-law" when Susan is Samuel's daughter-in-law): drop them. Above 8 people its
    # niece/nephew answers take the wrong person's gender, so keep families at <= 8.
    "family": TrainingTask(
        dataset="family_relationships",
        config={"min_family_size": 4, "max_family_size": 8},
        drop_answers=("mother-in-law", "father-in-law"),
        description="kinship questions about a short family story, one-word answer (verbal)",
    ),
    "syllogism": TrainingTask(
        dataset="syllogism",
        description="does a categorical conclusion follow from two premises? Yes/No (logic)",
    ),
    # Sorting 3-4 short words: at floor for the base model, learnable by a fine-tune.
    "word_sorting": TrainingTask(
        dataset="word_sorting",
        config={"min_words": 3, "max_words": 4, "min_word_length": 3, "max_word_length": 8},
        description="sort 3-4 words by ASCII order, a comma-separated list (sorting)",
    ),
    # No MMLU item lies outside the domains: the task owns six domains' subjects, which an
    # experiment training on it may not score (see sts_lightning.data.mmlu_qa).
    "mmlu_qa": TrainingTask(
        dataset="mmlu_qa",
        source="mmlu",
        description="MMLU questions of six reserved domains, bare option letter (knowledge QA)",
    ),
}
"""Source training sets by name. Answers are the oracle answers (a bare number, one word,
``Yes``/``No``, an option letter), so ``score_training_answer(name, example.answer, example)
== 1``."""


def _task(name: str) -> TrainingTask:
    if name not in TRAINING_SETS:
        raise ValueError(
            f"`name` must be one of the training sets {list(TRAINING_SETS)}, got {name!r}"
        )
    return TRAINING_SETS[name]


def _generator_seed(name: str, seed: int) -> int:
    # reasoning-gym draws item i from Random(seed + i): seeds 0 and 1 would share all but one
    # item. A hashed 64-bit base keeps sets of different seeds (e.g. train vs eval) disjoint.
    digest = hashlib.sha256(f"{name}\x00{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def load_training_set(
    name: str, n: int, seed: int = 0, *, exclude: Iterable[Example] = ()
) -> list[Example]:
    """``n`` distinct training pairs from a source task.

    Args:
        name: One of :data:`TRAINING_SETS` (``"arithmetic"``, ``"family"``, ``"syllogism"``,
            ``"mmlu_qa"``).
        n: Number of examples (distinct prompts).
        seed: Generator seed. Each seed draws an independent stream, but small tasks repeat
            prompts by chance (2,000 ``"arithmetic"`` prompts of seed 0 contain ~7 % of seed
            1's): pass the training examples as ``exclude`` when drawing an evaluation set.
        exclude: Examples whose prompts must not be returned.

    Returns:
        Examples with the question (plus the task's instruction) and the oracle answer.

    Example:
        >>> examples = load_training_set("arithmetic", 3, seed=0)
        >>> len(examples), examples[0].prompt.startswith("Calculate ")
        (3, True)
    """
    task = _task(name)
    positive_int("n", n)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int, got {seed!r}")
    if task.source == "mmlu":
        return load_mmlu_qa(n, seed, exclude=exclude)
    excluded = {ex.prompt for ex in exclude}
    # Small tasks repeat prompts (there are few 2-term sums); draw spares and keep the first n.
    budget = 4 * n + 2 * len(excluded) + 100
    dataset = create_generator(task.dataset, budget, _generator_seed(name, seed), **task.config)
    examples: dict[str, Example] = {}
    for i in range(budget):
        entry = dataset[i]
        if entry["answer"] in task.drop_answers:
            continue
        prompt = entry["question"] + task.instruction
        if prompt in excluded:
            continue
        examples.setdefault(prompt, Example(prompt=prompt, answer=str(entry["answer"])))
        if len(examples) == n:
            return list(examples.values())
    raise ValueError(
        f"`n`={n} is more than the {len(examples)} distinct prompts training set {name!r} "
        f"produced in {budget} draws"
    )


@functools.cache
def _scorer(dataset: str) -> Any:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(dataset)


def score_training_answer(name: str, completion: str | None, example: Example) -> float:
    """reasoning-gym's reward in ``[0, 1]`` for ``completion`` as an answer to ``example``.

    Args:
        name: The training set the example comes from.
        completion: The model's final answer (already extracted, e.g. ``"19"``).
        example: The example, whose ``answer`` is the oracle answer.

    Returns:
        1.0 for a correct answer; reasoning-gym's partial credit otherwise (for these tasks a
        completion that contains the answer among other text scores ``len(answer)/len(text)``).

    Example:
        >>> ex = Example(prompt="Calculate 2 + 3. Give only the final answer.", answer="5")
        >>> [round(score_training_answer("arithmetic", a, ex), 3) for a in ("5", "6", "It is 5")]
        [1.0, 0.0, 0.143]
    """
    if _task(name).source == "mmlu":
        from sts_lightning.data.mmlu_qa import score_mmlu_qa

        return score_mmlu_qa(completion, example)
    return score_generated_answer(_task(name).dataset, completion, example)


def score_generated_answer(dataset: str, completion: str | None, example: Example) -> float:
    """reasoning-gym generator ``dataset``'s score of ``completion`` against ``example``'s oracle
    answer: its own checker, which reads only ``entry["answer"]``, or :func:`exact_answer_match`
    for the generators whose checker needs item metadata (:data:`NEEDS_METADATA`)."""
    if dataset in NEEDS_METADATA:
        return exact_answer_match(completion, example.answer)
    entry = {"question": example.prompt, "answer": example.answer, "metadata": {}}
    return float(_scorer(dataset)(completion, entry))


NEEDS_METADATA = frozenset({"number_sorting", "word_sorting", "number_format"})
"""Generators whose reasoning-gym checker reads item metadata an Example does not keep: their
answers have one correct spelling, so they are scored by :func:`exact_answer_match`."""


def exact_answer_match(completion: str | None, answer: str) -> float:
    """1.0 when the whitespace-normalised texts, or the numbers they spell, are equal.

    Example:
        >>> exact_answer_match(" 4.0", "4"), exact_answer_match("a,  b", "a, b")
        (1.0, 1.0)
    """
    if completion is None:
        return 0.0
    a, b = " ".join(completion.split()), " ".join(answer.split())
    try:
        return float(float(a) == float(b))
    except ValueError:
        return float(a == b)

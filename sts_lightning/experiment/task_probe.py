"""The held-out problems of a source task, measured on a model: answer NLL and exact match.

:func:`split_task_items` holds problems out of each source task (a disjoint draw for built-in
tasks, the pool's tail for files). One :class:`TaskProbe` per task is encoded once;
:meth:`TaskProbe.measure` runs a model over it (teacher-forced answer NLL per problem, then
greedy completions scored by the task's checker) and returns per-problem values, so
:class:`TaskLearning` pairs the base and fine-tuned passes by item
(:func:`~sts_lightning.experiment.task_learning.task_change`) and applies the learned rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sts_lightning.data.prompts import Example
from sts_lightning.experiment.realised import exact_match, item_losses
from sts_lightning.experiment.task_learning import LearnedMargin, is_learned, task_change
from sts_lightning.model.precision import autocast
from sts_lightning.model.run_inputs import resolve_pad_id

__all__ = ["TaskLearning", "TaskProbe", "split_stop_items", "split_task_items"]

HELDOUT_SEED = 10_000
"""Generator seed of built-in tasks' held-out problems (the training pool is drawn with 0)."""

STOP_SEED = 20_000
"""Generator seed of built-in tasks' stop-probe problems (``finetune.stop_when_learned``)."""

_ALL_TOKENS = 1 << 30  # encode every problem: the probe's size is set by how many are drawn


@dataclass
class TaskProbe:
    """Held-out problems of one source task, encoded for the answer-NLL pass."""

    examples: list[Example]
    """The problems (never trained on)."""
    encoded: list
    """Their encodings, scored on the answer span."""
    score: Callable[[str, Example], float]
    """``score(completion, example)``: 1.0 for a correct answer (the task's checker)."""

    @classmethod
    def build(cls, tokenizer, examples: Sequence[Example], score) -> TaskProbe:
        """Encode ``examples`` (chat-templated) with their answer span scored."""
        from sts_lightning.monitor.evaluation import encode_eval_set

        examples = list(examples)
        encoded = encode_eval_set(tokenizer, examples, _ALL_TOKENS, span="answer")
        return cls(examples, encoded, score)

    def measure(self, model, tokenizer, *, batch_size: int = 8) -> dict[str, np.ndarray]:
        """``{"nll", "counts", "correct"}`` per problem ``(n,)``: summed answer NLL, answer
        tokens and greedy exact match (1/0)."""
        if not self.examples:
            empty = np.zeros(0)
            return {"nll": empty, "counts": empty, "correct": empty}
        losses = item_losses(
            model,
            {"task": self.encoded},
            pad_token_id=resolve_pad_id(tokenizer),
            batch_size=batch_size,
        )["task"]
        correct: list[float] = []

        def recorded(completion: str, example: Example) -> float:
            # exact_match scores each problem once, in order: keep the per-problem outcome.
            value = self.score(completion, example)
            correct.append(float(value == 1.0))
            return value

        exact_match(model, tokenizer, self.examples, recorded, batch_size=max(batch_size, 16))
        return {
            "nll": losses.nll.numpy(),
            "counts": losses.counts.numpy().astype(np.float64),
            "correct": np.asarray(correct),
        }


def split_task_items(
    name: str, builtin: bool, pool: list[Example], n: int
) -> tuple[list[Example], list[Example]]:
    """``(training pool, held-out problems)`` of one source task.

    A built-in task draws ``n`` new problems, disjoint from ``pool``; a file or dataset task
    holds out the last ``min(n, len(pool) // 4)`` of its pool (never trained on or shown as
    demonstrations). ``n`` = 0 holds out nothing.
    """
    if n <= 0:
        return pool, []
    if builtin:
        from sts_lightning.data.domains import load_training_set

        return pool, load_training_set(name, n, seed=HELDOUT_SEED, exclude=pool)
    m = min(n, len(pool) // 4)
    return (pool[:-m], pool[-m:]) if m else (pool, [])


def split_stop_items(
    name: str, builtin: bool, pool: list[Example], heldout: list[Example], n: int
) -> tuple[list[Example], list[Example]]:
    """``(training pool, stop-probe problems)``: ``n`` problems disjoint from both ``pool`` and
    the judged ``heldout`` problems (a fresh draw for built-in tasks, the pool's tail, at most a
    quarter of it, for file and dataset tasks)."""
    if builtin:
        from sts_lightning.data.domains import load_training_set

        return pool, load_training_set(name, n, seed=STOP_SEED, exclude=[*pool, *heldout])
    m = min(n, len(pool) // 4)
    return (pool[:-m], pool[-m:]) if m else (pool, [])


@dataclass
class TaskLearning:
    """Every source task's probe with the base model's results, and the learned rule."""

    probes: dict[str, TaskProbe]
    """``{task: probe}`` (a task without held-out problems has an empty probe)."""
    base: dict[str, dict[str, np.ndarray]]
    """``{task: per-problem values}`` of the base model (:meth:`TaskProbe.measure`)."""
    margin: LearnedMargin | None
    """The learned rule (``finetune.learned_margin``); ``None``: runs are not judged."""
    batch_size: int = 8
    """Sequences per forward pass."""
    precision: str = "32-true"
    """Of the probe's forwards and generations (``evaluation.precision``, resolved)."""

    @classmethod
    def measure(
        cls,
        model,
        tokenizer,
        items: dict[str, tuple[list[Example], Callable[[str, Example], float]]],
        margin: LearnedMargin | None,
        batch_size: int = 8,
        precision: str = "32-true",
    ) -> TaskLearning:
        """Encode ``{task: (held-out problems, checker)}`` and run the base model over them."""
        probes = {n: TaskProbe.build(tokenizer, ex, score) for n, (ex, score) in items.items()}
        learning = cls(probes, {}, margin, batch_size, precision)
        learning.base = {n: learning.run(model, tokenizer, n) for n in probes}
        return learning

    def run(self, model, tokenizer, task: str) -> dict[str, np.ndarray]:
        """``model``'s per-problem values on ``task``'s probe (:meth:`TaskProbe.measure`)."""
        device = next(model.parameters()).device
        with autocast(self.precision, device):
            return self.probes[task].measure(model, tokenizer, batch_size=self.batch_size)

    def judge(self, model, tokenizer, task: str) -> dict:
        """The fine-tuned ``model``'s :func:`task_change` on ``task`` with ``learned`` (bool;
        ``None`` without a rule) and ``reasons`` (why not)."""
        before = self.base[task]
        after = self.run(model, tokenizer, task)
        change = task_change(
            before["nll"],
            after["nll"],
            before["counts"],
            before["correct"],
            after["correct"],
            confidence=0.95 if self.margin is None else self.margin.confidence,
        )
        if self.margin is None:
            return {**change, "learned": None, "reasons": []}
        learned, reasons = is_learned(change, self.margin)
        return {**change, "learned": learned, "reasons": reasons}

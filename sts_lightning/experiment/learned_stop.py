"""Stop a fine-tune once its task is learned: a Lightning callback on a held-out stop probe.

A fine-tune that has learned its task by step 20 gains nothing for the experiment from steps
20-40 but their cost. :class:`LearnedStop` measures the model every ``check_every`` optimizer
steps on its own *stop probe* (problems of the task disjoint from training and from the
problems the run is finally judged on, so the final judgement is not biased by the choice of
when to stop), applies the recipe's learned rule (:func:`~sts_lightning.experiment.
task_learning.is_learned`) against the base model's values on the same problems, and sets
``trainer.should_stop`` when it holds. ``finetune.steps`` (or the task's budget) caps the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from lightning.pytorch.callbacks import Callback

from sts_lightning.experiment.task_learning import LearnedMargin, is_learned, task_change

__all__ = ["LearnedStop"]

log = logging.getLogger(__name__)


class LearnedStop(Callback):
    """Set ``trainer.should_stop`` once the learned rule holds on a stop probe.

    Args:
        measure: ``measure(model, tokenizer) -> {"nll", "counts", "correct"}`` per problem of
            the stop probe (:meth:`~sts_lightning.experiment.task_probe.TaskLearning.run`).
        base: The base model's values on the same problems.
        margin: The learned rule.
        check_every: Optimizer steps between checks (≥ 1).
        min_steps: No check before this many steps.

    Attributes:
        stopped_at: The step at which the rule held (``None`` until then).
        checks: ``[(step, learned, reasons)]`` of every check.
    """

    def __init__(
        self,
        measure: Callable[..., dict[str, np.ndarray]],
        base: dict[str, np.ndarray],
        margin: LearnedMargin,
        check_every: int,
        min_steps: int = 1,
    ) -> None:
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"`check_every` must be an int >= 1, got {check_every!r}")
        if not isinstance(margin, LearnedMargin):
            raise ValueError(f"`margin` must be a LearnedMargin, got {margin!r}")
        self.measure, self.base, self.margin = measure, base, margin
        self.check_every, self.min_steps = check_every, min_steps
        self.stopped_at: int | None = None
        self.checks: list[tuple[int, bool, list[str]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = step >= self.min_steps and step % self.check_every == 0
        if not due or (self.checks and self.checks[-1][0] == step):
            return  # not a check step, or this optimizer step was checked (accumulation)
        self._check(trainer, pl_module, step)

    def _check(self, trainer, pl_module, step: int) -> None:
        after = self.measure(pl_module.model, pl_module.tokenizer)
        change = task_change(
            self.base["nll"],
            after["nll"],
            self.base["counts"],
            self.base["correct"],
            after["correct"],
            confidence=self.margin.confidence,
        )
        learned, reasons = is_learned(change, self.margin)
        self.checks.append((step, learned, reasons))
        log.info("step %d: stop probe %s", step, "learned" if learned else "; ".join(reasons))
        if learned:
            self.stopped_at = step
            trainer.should_stop = True

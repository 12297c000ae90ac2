"""The ``first_order`` control in the experiment: domain gradients once, a task's gradient per run.

The strongest cheap alternative to STS a user could compute before training: the change of each
domain's answer NLL that one step along the training set's mean gradient would cause,
``−η · g_domain · g_train`` (:mod:`sts_lightning.forecast.first_order`). The domains' gradients
do not depend on the task, so they are taken once, on each domain's forecast ("score") items and
on two disjoint halves of them (the forecast's own reliability); each (task, seed) adds one
gradient over a seeded subset of its training pool.

Scores are reported as two predictors: ``first_order`` = |predicted change| (a magnitude, like
|Δ|) and ``first_order_signed`` = the predicted change itself (> 0: the domain's loss rises).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sts_lightning.data.prompts import Example

__all__ = ["FirstOrderControl"]


def _scores(predicted: Mapping[str, float]) -> dict[str, dict[str, float]]:
    return {
        d: {"first_order": abs(v), "first_order_signed": float(v)} for d, v in predicted.items()
    }


@dataclass
class FirstOrderControl:
    """Gradients of every domain, computed once; :meth:`task` scores one (task, seed).

    Args:
        model: The base model (its parameters are not changed; gradients are cleared after).
        tokenizer: Its tokenizer (chat template).
        config: The recipe's ``first_order`` settings.
        lr: The step size η (the fine-tune's learning rate; it scales every domain alike).
    """

    model: object
    tokenizer: object
    config: object
    lr: float
    domain_grads: dict = field(default_factory=dict)
    _gradient: Any = field(default=None, repr=False)

    def _grad(self, examples: Sequence[Example], halves: bool = False):
        if self._gradient is None:  # parameters and projection: chosen once
            from sts_lightning.forecast.first_order import gradient_fn

            cfg = self.config
            self._gradient = gradient_fn(
                self.model, self.tokenizer, which=cfg.parameters, dim=cfg.dim, kind=cfg.kind,
                seed=cfg.seed,
            )  # fmt: skip
        return self._gradient(
            list(examples), halves=halves, split_seed=self.config.seed,
            batch_size=self.config.batch_size,
        )  # fmt: skip

    def domains(self, scored: Mapping[str, Sequence[Example]]) -> FirstOrderControl:
        """Take every domain's gradient on its first ``domain_items`` forecast items (whole and
        two halves)."""
        n = self.config.domain_items
        self.domain_grads = {
            d: self._grad([e for e in items if e.answer is not None][:n], halves=True)
            for d, items in scored.items()
        }
        return self

    def task(self, pool: Sequence[Example], seed: int) -> tuple[dict, dict]:
        """``(scores, halves)`` for one (task, seed): ``{domain: {"first_order": |Δ̂|,
        "first_order_signed": Δ̂}}`` on the whole domain items and on each half ``{"a", "b"}``.
        """
        from sts_lightning.forecast.first_order import first_order_forecast

        n = min(self.config.train_items, len(pool))
        train = random.Random(seed).sample(list(pool), n)
        out = first_order_forecast(self._grad(train), self.domain_grads, self.lr)
        halves = {k: _scores(v) for k, v in out.get("halves", {}).items()}
        return _scores(out["scores"]), halves

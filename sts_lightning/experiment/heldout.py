"""What fine-tuning is judged on: each domain's held-out choice items and the base model's scores.

Held-out items come from each domain's "heldout" half (never scored by STS): MMLU questions with
their options, HumanEval's canonical solution against a mutated one
(:func:`~sts_lightning.data.choices.load_choice_domain`), a panel skill's question and its oracle
answer (:func:`skill_items`, answer NLL only), or, for ``domain_files``, each answer among other
answers of the same file (:func:`~sts_lightning.data.choices.pair_choices`). With
``evaluation.vary_items`` each seed draws its own ``items_per_domain`` items, so the seed mean
covers more items and the spread over seeds includes item sampling; the base model is scored
once per seed and reused by every task at that seed (tasks stay paired on the same items).
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sts_lightning.data.choice_format import encode_choices
from sts_lightning.data.choices import ChoiceItem, load_choice_domain, pair_choices, rotations
from sts_lightning.data.prompts import Example
from sts_lightning.experiment.config import ExperimentConfig
from sts_lightning.experiment.realised import compare, exact_match, score_choices
from sts_lightning.model.precision import autocast, resolve_precision
from sts_lightning.model.run_inputs import resolve_pad_id
from sts_lightning.monitor.answer_scores import average_rotations

__all__ = ["Evaluation", "choice_sets", "skill_items"]

log = logging.getLogger(__name__)


def _rotated(items: Sequence[ChoiceItem], encode) -> tuple[list, list[tuple[int, int]]]:
    """Every rotation of every listed item, encoded, with its ``(item, j)``."""
    pairs = [((i, j), r) for i, item in enumerate(items) for j, r in enumerate(rotations(item), 1)]
    return encode([r for _, r in pairs]), [entry for entry, _ in pairs]


def choice_sets(
    job: ExperimentConfig, heldout: Mapping[str, Sequence[Example]], seed: int
) -> dict[str, list[ChoiceItem]]:
    """``{domain: items}``: ``items_per_domain`` held-out choice items per domain, by ``seed``.

    Args:
        job: The experiment (its built-in ``domains``, ``domain_files`` and ``evaluation``).
        heldout: ``{domain: examples}`` of each domain's held-out half; built-in domains are
            re-read as choice items, file domains become :func:`pair_choices` of these.
        seed: Picks and orders the items.
    """
    from sts_lightning.data.domains import domain_sizes
    from sts_lightning.data.skills import SKILLS

    want = job.evaluation.items_per_domain
    out = {}
    for name, examples in heldout.items():
        if name in SKILLS and name not in job.domain_files:
            out[name] = skill_items(name, want, seed)
            continue
        if name in job.domain_files:
            pool = pair_choices(list(examples))  # the whole half: distractors do not depend on n
            random.Random(seed).shuffle(pool)
            available = len(pool)
        else:
            available = domain_sizes([name])[name]["heldout"]
            pool = load_choice_domain(name, n=min(want, available), seed=seed)
        if available < want:
            log.info("domain %r: %d held-out items (< items_per_domain=%d)", name, available, want)
        out[name] = pool[:want]
    return out


def skill_items(name: str, n: int, seed: int) -> list[ChoiceItem]:
    """``n`` held-out items of a panel skill as one-option text items: the question, then its
    oracle answer, scored at the answer (its NLL; no options, so no margin)."""
    from sts_lightning.data.skills import load_skill

    examples = load_skill(name, n, "heldout", seed=seed)
    return [ChoiceItem(e.prompt, (e.answer,), 0, listed=False) for e in examples]


@dataclass
class Evaluation:
    """The held-out items of every seed with the base model's scores, and the task problems."""

    encoded: dict
    """``{item seed: {domain: encoded items}}``."""
    base: dict
    """``{item seed: {domain: ChoiceScores}}`` of the base model."""
    score_kw: dict
    """Settings of the held-out pass (:func:`score_choices`)."""
    metric: str
    """The primary metric (``evaluation.metric``)."""
    vary_items: bool
    """Whether each run's seed picks its items (else seed 0's items for every run)."""
    task_items: dict
    """``{task: examples}``: held-out problems of the built-in source tasks."""
    base_accuracy: dict = field(default_factory=dict)
    """``{task: exact match}`` of the base model."""
    rotated: dict = field(default_factory=dict)
    """``{item seed: {domain: (encoded rotations, [(item, j)])}}`` with
    ``evaluation.rotate_options``; empty without."""
    precision: str = "32-true"
    """Of the scoring forwards (``evaluation.precision``, resolved for the model's device)."""
    item_nll: bool = True
    """Whether fine-tuned models' passes score the whole item (``evaluation.item_nll``, or the
    metric reads it); the base model's always does (the base-loss control reads it)."""

    @classmethod
    def measure(cls, model, tokenizer, job: ExperimentConfig, layer: int, heldout, task_items):
        """Encode each seed's held-out items; score them and the task problems (base model)."""
        from sts_lightning.experiment.finetune import task_reward

        settings = job.evaluation
        score_kw = dict(
            layer=layer,
            pad_token_id=resolve_pad_id(tokenizer),
            exclude_token_ids=sorted(set(tokenizer.all_special_ids)),
            batch_size=settings.batch_size,
        )
        encode = functools.partial(
            encode_choices, tokenizer, text_format=settings.format, max_length=settings.max_length
        )
        encoded, rotated, base = {}, {}, {}
        for seed in job.seeds if settings.vary_items else [0]:
            sets = choice_sets(job, heldout, seed)
            encoded[seed] = {name: encode(items) for name, items in sets.items()}
            if settings.rotate_options:
                rotated[seed] = {name: _rotated(items, encode) for name, items in sets.items()}
        device = next(model.parameters()).device
        evaluation = cls(
            encoded,
            base,
            score_kw,
            settings.metric,
            settings.vary_items,
            task_items,
            {},
            rotated,
            resolve_precision(settings.precision, device, "evaluation.precision"),
            settings.item_nll or settings.metric == "item_nll",
        )
        for seed in encoded:
            base[seed] = evaluation.scores(model, seed)
        with autocast(evaluation.precision, device):
            evaluation.base_accuracy = {
                n: exact_match(model, tokenizer, ex, task_reward(n)) for n, ex in task_items.items()
            }
        return evaluation

    def scores(self, model, key: int, item_nll: bool = True) -> dict:
        """``{domain: ChoiceScores}`` of ``model`` on item set ``key``, rotations averaged
        (``item_nll``: also the whole item's NLL)."""
        device = next(model.parameters()).device
        with autocast(self.precision, device):
            scores = score_choices(model, self.encoded[key], **self.score_kw, item_nll=item_nll)
        if key not in self.rotated:
            return scores
        flat = {name: encoded for name, (encoded, _) in self.rotated[key].items()}
        with autocast(self.precision, device):
            extra = score_choices(model, flat, **(self.score_kw | {"layer": None}), item_nll=False)
        return {
            name: average_rotations(s, extra[name], self.rotated[key][name][1])
            for name, s in scores.items()
        }

    def realised(self, model, sae, max_norm: float, seed: int) -> dict[str, dict]:
        """:func:`compare` of ``model``'s pass over ``seed``'s items with the base model's."""
        key = seed if self.vary_items else 0
        now = self.scores(model, key, item_nll=self.item_nll)
        return compare(self.base[key], now, sae, max_norm, metric=self.metric)

    def task_accuracy(self, model, tokenizer, task: str) -> dict[str, float]:
        """Exact match on ``task``'s held-out problems before and after (NaN without any)."""
        from sts_lightning.experiment.finetune import task_reward

        after = float("nan")
        if task in self.task_items:
            with autocast(self.precision, next(model.parameters()).device):
                after = exact_match(model, tokenizer, self.task_items[task], task_reward(task))
        return {"before": self.base_accuracy.get(task, float("nan")), "after": after}

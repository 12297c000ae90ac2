"""The pre-registered skills panel: disjoint seeded splits, checkers, tasks and near/far labels."""

from __future__ import annotations

import pytest

from sts_lightning.data.skills import (
    NEAR_FAR,
    SKILL_TASKS,
    SKILLS,
    load_skill,
    score_skill_answer,
    split_of,
)
from sts_lightning.experiment.near_far import NearFarLabels


def test_panel_size_and_no_source_generator():
    assert len(SKILLS) >= 12 and len(SKILL_TASKS) >= 4
    sources = {task.dataset for task in SKILL_TASKS.values()}
    assert not sources & {skill.dataset for skill in SKILLS.values()}


def test_near_far_labels_are_valid_for_the_panel():
    labels = NearFarLabels(**NEAR_FAR, domains=list(SKILLS))
    assert set(labels.tasks) == set(SKILL_TASKS)


@pytest.mark.parametrize("name", list(SKILLS))
def test_splits_are_disjoint_seeded_and_scored(name):
    score = load_skill(name, 12, "score", seed=0)
    heldout = load_skill(name, 12, "heldout", seed=0)
    again = load_skill(name, 12, "heldout", seed=1)
    prompts = [e.prompt for e in score]
    assert len(set(prompts)) == 12 and not set(prompts) & {e.prompt for e in heldout + again}
    assert load_skill(name, 12, "heldout", seed=0) == heldout and again != heldout
    for ex in heldout[:4]:
        assert score_skill_answer(name, ex.answer, ex) == 1.0
        assert score_skill_answer(name, "zzz", ex) < 1.0


def test_split_is_a_function_of_the_question():
    assert split_of("chain_sum", "1 + 1 =") == split_of("chain_sum", "1 + 1 =")
    assert {split_of("chain_sum", f"{i} + 1 =") for i in range(20)} == {"score", "heldout"}


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="`name` must be one of the skills"):
        load_skill("basic_arithmetic", 3)
    with pytest.raises(ValueError, match="`split`"):
        load_skill("chain_sum", 3, split="train")

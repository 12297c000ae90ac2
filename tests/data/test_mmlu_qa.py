"""``mmlu_qa``: MMLU items no scorable domain shares, a bare-letter answer, its checker."""

from __future__ import annotations

import pytest

from sts_lightning.data.domains import (
    DOMAINS,
    MMLU_DOMAINS,
    TRAINING_SETS,
    load_domain,
    load_training_set,
    score_training_answer,
)
from sts_lightning.data.mmlu_qa import (
    _INSTRUCTION as INSTRUCTION,
)
from sts_lightning.data.mmlu_qa import (
    MMLU_QA_DOMAINS,
    _items,
    mmlu_qa_letter,
    score_mmlu_qa,
)
from sts_lightning.data.prompts import Example


def _question(prompt: str) -> str:
    """The domain's prompt (question and options) inside an mmlu_qa prompt."""
    return prompt.removesuffix(INSTRUCTION)


def test_items_are_disjoint_from_every_other_domain():
    questions = {_question(ex.prompt) for ex in _items()}
    assert len(_items()) == 3922  # the six reserved domains' distinct questions
    for name in DOMAINS:
        if name in MMLU_QA_DOMAINS:
            continue
        for split in ("score", "heldout"):
            shared = questions & {ex.prompt for ex in load_domain(name, split=split)}
            assert not shared, (name, split, sorted(shared)[:2])


def test_reserved_domains_cover_the_task_and_the_answer_is_the_domain_letter():
    reserved = {ex.prompt: ex for d in MMLU_QA_DOMAINS for s in ("score", "heldout")
                for ex in load_domain(d, split=s)}  # fmt: skip
    for ex in load_training_set("mmlu_qa", 200, seed=0):
        domain_item = reserved[_question(ex.prompt)]
        assert domain_item.answer.startswith(f"The answer is {ex.answer}. ")
        assert ex.prompt.endswith("Answer with the letter of the correct option only.")
        assert "\nD. " in ex.prompt and ex.answer in ("A", "B", "C", "D")
    assert set(MMLU_QA_DOMAINS) <= set(MMLU_DOMAINS)


def test_draws_are_deterministic_and_exclude_keeps_pool_and_heldout_apart():
    pool = load_training_set("mmlu_qa", 2048, seed=0)
    assert pool == load_training_set("mmlu_qa", 2048, seed=0)
    assert len({ex.prompt for ex in pool}) == 2048
    held = load_training_set("mmlu_qa", 64, seed=10_000, exclude=pool)
    assert not {ex.prompt for ex in pool} & {ex.prompt for ex in held}
    assert load_training_set("mmlu_qa", 5, seed=1) != load_training_set("mmlu_qa", 5, seed=2)
    with pytest.raises(ValueError, match="`n`=4000 is more than the 3922"):
        load_training_set("mmlu_qa", 4000)


@pytest.mark.parametrize(
    ("completion", "letter"),
    [("B", "B"), ("b", "B"), ("B.", "B"), ("(C) Paris", "C"), ("[D]", "D"),
     ("The answer is A.", "A"), ("A: yes", "A"), ("Because", None), ("", None), (None, None),
     ("E", None), ("AB", None)],
)  # fmt: skip
def test_letter_extraction(completion, letter):
    assert mmlu_qa_letter(completion) == letter


def test_checker_through_the_training_set_and_the_reward():
    from sts_lightning.experiment.finetune import task_reward

    assert "mmlu_qa" in TRAINING_SETS and TRAINING_SETS["mmlu_qa"].source == "mmlu"
    ex = Example(prompt="Q?\n\nA. x\nB. y\nC. z\nD. w", answer="B")
    assert [score_mmlu_qa(c, ex) for c in ("B", "C")] == [1.0, 0.0]
    for item in load_training_set("mmlu_qa", 50, seed=3):
        assert score_training_answer("mmlu_qa", item.answer, item) == 1.0
    reward = task_reward("mmlu_qa")  # the experiment's exact match: via accuracy_reward
    assert [reward(c, ex) for c in ("B", "B.", "(B)", "A", "The answer is B")] == [1, 1, 1, 0, 1]


def test_experiment_refuses_to_score_a_reserved_domain():
    from sts_lightning.experiment.config import ExperimentConfig

    ExperimentConfig(tasks=["arithmetic", "mmlu_qa"], domains=["math", "law", "history"])
    ExperimentConfig(tasks=["arithmetic", "family"], domains=["math", "law", "psychology"])
    with pytest.raises(ValueError, match=r"`domains` entries \['psychology'\].*'mmlu_qa'"):
        ExperimentConfig(tasks=["arithmetic", "mmlu_qa"], domains=["math", "law", "psychology"])

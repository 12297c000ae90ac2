"""Reward functions with TRL's signature ``(prompts, completions, **columns) -> list[float|None]``.

Each function gets one entry per completion: ``prompts[i]`` is the user turn that produced
``completions[i]`` (decoded text, special tokens dropped), and every other dataset column is
passed by name, repeated to line up with the completions (``answer``, ``test``, …). Unknown
keyword arguments are ignored, so the functions work unchanged in TRL's ``GRPOTrainer`` and in
:class:`~sts_lightning.training.grpo.GRPOModule`. ``None`` means "this function cannot score this
completion"; GRPO then leaves it out of the group baseline (TRL's semantics).

- :func:`accuracy_reward`: the completion's final number equals the answer's (1.0 / 0.0).
- :func:`format_reward`: the completion is a bare number (1.0 / 0.0).
- :func:`code_reward` (:mod:`sts_lightning.training.code_execution`): a HumanEval-style program
  passes its tests in a subprocess.

:func:`score_completions` is how GRPO calls them: once per rollout, ``None`` → NaN, and a function
that raises or returns the wrong number of rewards gets an error naming it.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import torch

from sts_lightning.training.code_execution import code_reward, make_code_reward

__all__ = [
    "RewardFunc",
    "accuracy_reward",
    "code_reward",
    "extract_final_number",
    "format_reward",
    "make_code_reward",
    "resolve_reward",
    "reward_name",
    "score_completions",
]

# A signed integer or decimal, with optional thousands separators ("1,234.5").
_NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
# GSM8K writes its reference solutions as "... #### 72".
_HASHES_RE = re.compile(r"####\s*(\S+)")
_BARE_NUMBER_RE = re.compile(rf"\s*\$?\s*(?:{_NUMBER})\s*\.?\s*")


def extract_final_number(text: str | None) -> str | None:
    r"""The final numeric answer in ``text``, canonicalised, or ``None`` if there is none.

    Looks, in order, at the last ``\boxed{…}``, a GSM8K ``#### …`` marker, then the last number
    anywhere. Thousands separators are dropped and an integral value is written without decimals.

    Args:
        text: A completion or a reference answer.

    Returns:
        ``"-12"``, ``"0.5"``, …; ``None`` when ``text`` holds no number.

    Example:
        >>> [extract_final_number(t) for t in ("19", "So 3 + 4 = 7.", "#### 1,234", "2.50", "x")]
        ['19', '7', '1234', '2.5', None]
        >>> extract_final_number(r"The answer is \boxed{-3}, not 5")
        '-3'
    """
    if not isinstance(text, str):
        return None
    for pattern in (_BOXED_RE, _HASHES_RE):
        marked = pattern.findall(text)
        if marked:
            text = marked[-1]
            break
    numbers = _NUMBER_RE.findall(text)
    if not numbers:
        return None
    value = Fraction(numbers[-1].replace(",", ""))
    if value.denominator == 1:
        return str(value.numerator)
    return str(float(value))  # "2.50" and "2.5" both become "2.5"


def _column(name: str, values: Sequence[Any] | None, n: int, func: str) -> Sequence[Any]:
    if values is None:
        raise ValueError(f"`{func}` needs a `{name}` column in the batch (one value per prompt)")
    if len(values) != n:
        raise ValueError(f"`{name}` has {len(values)} values for {n} completions in `{func}`")
    return values


def accuracy_reward(
    prompts: Sequence[Any],
    completions: Sequence[str],
    answer: Sequence[Any] | None = None,
    task: Sequence[str | None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    r"""1.0 when the completion's final answer is the reference answer, else 0.0.

    Numbers on both sides go through :func:`extract_final_number` (so ``"The answer is 19."``
    matches ``"19"`` and a GSM8K solution ``"… #### 19"``) and are compared exactly. When the
    batch carries a ``task`` column naming a built-in training set
    (:data:`~sts_lightning.data.domains.TRAINING_SETS`, as
    :class:`~sts_lightning.training.data.PromptDataModule` adds), that task's reasoning-gym checker
    decides
    (:func:`~sts_lightning.data.domains.score_training_answer`, on the extracted number, or on the
    completion without trailing punctuation for non-numeric answers such as ``"Yes"``); only a
    full score counts.

    Args:
        prompts: The user turns, one per completion.
        completions: The completions' text.
        answer: The reference answers (dataset column ``answer``).
        task: Optional training-set names, one per completion.
        **kwargs: Other columns, ignored.

    Returns:
        One reward per completion; ``None`` where the reference holds no number and no checker
        is named, so that completion is left out of the baseline rather than scored 0.

    Example:
        >>> accuracy_reward(["q"] * 4, ["19", "It is 19.", "18", "no idea"], answer=["19"] * 4)
        [1.0, 1.0, 0.0, 0.0]
        >>> accuracy_reward(["q"], [r"so \boxed{72}"], answer=["3 * 24 = 72\n#### 72"])
        [1.0]
        >>> accuracy_reward(["q"] * 2, ["Yes.", "No"], answer=["Yes"] * 2, task=["syllogism"] * 2)
        [1.0, 0.0]
    """
    from sts_lightning.data.domains import TRAINING_SETS

    answers = _column("answer", answer, len(completions), "accuracy_reward")
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        predicted = extract_final_number(completion)
        reference = extract_final_number(str(answers[i]))
        name = None if task is None else task[i]
        if name in TRAINING_SETS:
            from sts_lightning.data.domains import score_training_answer
            from sts_lightning.data.prompts import Example

            guess = predicted if reference is not None else completion.strip().rstrip(".!")
            example = Example(prompt=str(prompts[i]), answer=str(answers[i]))
            score = score_training_answer(name, guess or None, example)
            rewards.append(float(score == 1.0))
        elif reference is None:
            rewards.append(None)
        else:
            rewards.append(float(predicted == reference))
    return rewards


def format_reward(
    prompts: Sequence[Any], completions: Sequence[str], **kwargs: Any
) -> list[float | None]:
    """1.0 when the completion is only a number (``"19"``, ``" -3.5."``, ``"$1,200"``), else 0.0.

    Pairs with an instruction such as "Give only the final answer." (the ``arithmetic``
    training set's): it rewards obeying the format whether or not the number is right.

    Args:
        prompts: The user turns (unused).
        completions: The completions' text.
        **kwargs: Other columns, ignored.

    Returns:
        One reward per completion.

    Example:
        >>> format_reward(["q"] * 4, ["19", " -3.5.", "The answer is 19", ""])
        [1.0, 1.0, 0.0, 0.0]
    """
    return [float(_BARE_NUMBER_RE.fullmatch(c or "") is not None) for c in completions]


# ------------------------------------------------------------- calling reward functions
RewardFunc = Callable[..., Sequence[float | None]]


def resolve_reward(func: str | RewardFunc) -> RewardFunc:
    """A reward function, or the function a dotted path (``pkg.module.name``) names."""
    if callable(func):
        return func
    if not isinstance(func, str) or "." not in func:
        raise ValueError(
            f"`reward_funcs` entries must be callables or dotted paths such as "
            f"'sts_lightning.training.rewards.accuracy_reward', got {func!r}"
        )
    module, _, name = func.rpartition(".")
    resolved = getattr(importlib.import_module(module), name, None)
    if not callable(resolved):
        raise ValueError(f"`reward_funcs` entry {func!r} does not name a callable")
    return resolved


def resolve_rewards(
    funcs: Sequence[str | RewardFunc], weights: Sequence[float] | None = None
) -> tuple[list[RewardFunc], list[float]]:
    """Every reward function (:func:`resolve_reward`) and its weight (1.0 each by default).

    Raises:
        ValueError: No function, or not one weight per function.
    """
    resolved = [resolve_reward(f) for f in funcs]
    weights = [1.0] * len(resolved) if weights is None else list(weights)
    if not resolved or len(weights) != len(resolved):
        raise ValueError(
            f"`reward_weights` must have one weight per reward function "
            f"({len(resolved)}, at least one), got {len(weights)}"
        )
    return resolved, weights


def reward_name(func: Callable[..., Any]) -> str:
    """The name a reward function logs under (TRL: its ``__name__``; partials unwrapped)."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)


def score_completions(
    reward_funcs: Sequence[Callable[..., Sequence[float | None]]],
    prompts: Sequence[Any],
    completions: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    columns: dict[str, Sequence[Any]],
) -> torch.Tensor:
    """Call every reward function on the rollout.

    Args:
        reward_funcs: TRL-signature functions ``(prompts, completions, **columns)``.
        prompts: One prompt per completion (each prompt repeated ``G`` times).
        completions: Decoded completions, ``N`` of them.
        completion_ids: Their token ids (passed as ``completion_ids``, as TRL does).
        columns: Other dataset columns, each with ``N`` values.

    Returns:
        ``(N, F)`` float32 rewards, NaN where a function returned ``None``.

    Raises:
        RuntimeError: A reward function raised (chained, naming the function).
        ValueError: A reward function returned other than one number or None per completion.
    """
    n = len(completions)
    out = torch.full((n, len(reward_funcs)), math.nan)
    for j, func in enumerate(reward_funcs):
        name = reward_name(func)
        try:
            values = func(
                prompts=list(prompts),
                completions=list(completions),
                completion_ids=[list(c) for c in completion_ids],
                **columns,
            )
        except Exception as err:
            raise RuntimeError(
                f"reward function `{name}` raised {type(err).__name__}: {err}"
            ) from err
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(
                f"reward function `{name}` must return a list of {n} floats or None, "
                f"got {type(values).__name__}"
            )
        if len(values) != n:
            raise ValueError(
                f"reward function `{name}` returned {len(values)} rewards for {n} completions; "
                "it must return exactly one float or None per completion"
            )
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                out[i, j] = float(value)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"reward function `{name}` returned {value!r} at index {i}; "
                    "rewards must be floats or None"
                ) from err
    return out

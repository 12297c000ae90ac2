"""Reward functions with TRL's signature ``(prompts, completions, **columns) -> list[float|None]``.

Each function gets one entry per completion: ``prompts[i]`` produced ``completions[i]``, and
every other dataset column is passed by name, repeated to line up with the completions
(``answer``, ``test``, …). Completions are strings, or for conversational prompts message lists
``[{"role": "assistant", "content": text}]``; these functions accept both. Unknown keyword
arguments (TRL's ``trainer_state``, ``log_extra``, …) are ignored, so the functions work
unchanged in TRL's ``GRPOTrainer`` and in :class:`~sts_lightning.training.grpo.GRPOModule`
(which calls them as TRL does: :mod:`~sts_lightning.training.reward_calls`). ``None`` means
"this function cannot score this completion"; GRPO then leaves it out of the group baseline.

- :func:`accuracy_reward`: the completion's final answer equals the reference. Answers are
  compared by `math_verify <https://github.com/huggingface/Math-Verify>`_ (the verifier TRL's
  ``accuracy_reward`` uses: LaTeX such as ``\boxed{\frac{1}{2}}`` and plain numbers, the last
  answer in the text, ``\boxed{}`` first), or by a built-in task's reasoning-gym checker.
- :func:`format_reward`: the completion is a bare number (1.0 / 0.0).
- :func:`code_reward` (:mod:`sts_lightning.training.code_execution`): a HumanEval-style program
  passes its tests in a subprocess.

:func:`extract_final_number` is the plain number extraction the reasoning-gym checkers are fed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from sts_lightning.training.code_execution import code_reward, make_code_reward

# Older code imports the calling side from here.
from sts_lightning.training.reward_calls import (
    RewardFunc,
    completion_text,
    prompt_text,
    resolve_reward,
    resolve_rewards,
    reward_name,
    score_completions,
)

__all__ = [
    "RewardFunc",
    "accuracy_reward",
    "code_reward",
    "extract_final_number",
    "format_reward",
    "make_code_reward",
    "math_match",
    "resolve_reward",
    "resolve_rewards",
    "reward_name",
    "score_completions",
]

# A signed integer or decimal, with optional thousands separators ("1,234.5").
_NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
# A whole boxed answer that is one fraction: \frac{1}{2}, \dfrac{-3}{4}, 1/2.
_FRACTION_RE = re.compile(
    r"\s*(-?)\s*(?:\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}|(-?\d+)\s*/\s*(-?\d+))\s*"
)
# GSM8K writes its reference solutions as "... #### 72".
_HASHES_RE = re.compile(r"####\s*(\S+)")
_BARE_NUMBER_RE = re.compile(rf"\s*\$?\s*(?:{_NUMBER})\s*\.?\s*")


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{…}`` in ``text``, nested braces balanced.

    Example:
        >>> last_boxed(r"so \boxed{\frac{1}{2}}."), last_boxed(r"\boxed{1} \boxed{2")
        ('\\frac{1}{2}', '1')
    """
    for start in reversed([m.end() for m in re.finditer(r"\\boxed\s*\{", text)]):
        depth = 1
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                return text[start:end]
    return None  # none, or none closed


def _canonical(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def extract_final_number(text: str | None) -> str | None:
    r"""The final numeric answer in ``text``, canonicalised, or ``None`` if there is none.

    Looks, in order, at the last ``\boxed{…}`` (nested braces allowed; a lone fraction such as
    ``\frac{1}{2}`` is its value), a GSM8K ``#### …`` marker, then the last number anywhere.
    Thousands separators are dropped and an integral value is written without decimals.

    Args:
        text: A completion or a reference answer.

    Returns:
        ``"-12"``, ``"0.5"``, …; ``None`` when ``text`` holds no number.

    Example:
        >>> [extract_final_number(t) for t in ("19", "So 3 + 4 = 7.", "#### 1,234", "2.50", "x")]
        ['19', '7', '1234', '2.5', None]
        >>> extract_final_number(r"The answer is \boxed{-3}, not 5")
        '-3'
        >>> extract_final_number(r"so \boxed{\frac{1}{2}}"), extract_final_number(r"\boxed{-6/4}")
        ('0.5', '-1.5')
    """
    if not isinstance(text, str):
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        fraction = _FRACTION_RE.fullmatch(boxed)
        if fraction and int(fraction[3] or fraction[5]) != 0:
            sign = -1 if fraction[1] else 1
            num, den = int(fraction[2] or fraction[4]), int(fraction[3] or fraction[5])
            return _canonical(sign * Fraction(num, den))
        text = boxed
    else:
        marked = _HASHES_RE.findall(text)
        text = marked[-1] if marked else text
    numbers = _NUMBER_RE.findall(text)
    if not numbers:
        return None
    return _canonical(Fraction(numbers[-1].replace(",", "")))  # "2.50" and "2.5" both "2.5"


def math_match(completion: str, reference: str) -> float | None:
    r"""1.0 when math_verify finds ``completion``'s answer equal to ``reference``'s, else 0.0.

    The reference is read after a GSM8K ``####`` marker when it has one; the completion's
    answer is its last ``\boxed{}`` or, without one, its last LaTeX or plain expression.

    Returns:
        ``None`` when the reference holds no answer math_verify can parse (``"Paris"``).

    Example:
        >>> math_match(r"\boxed{\frac{1}{2}}", "0.5"), math_match("It is 19 or 20", "19")
        (1.0, 0.0)
    """
    from math_verify import parse, verify

    # math_verify times out with signal.alarm, which only works in the main thread (as TRL).
    main = threading.current_thread() is threading.main_thread()
    if not main:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).setLevel(logging.ERROR)
    marked = _HASHES_RE.findall(reference)
    gold = parse(marked[-1] if marked else reference, parsing_timeout=10 if main else None)
    if not gold:
        return None
    guess = parse(completion, parsing_timeout=10 if main else None)
    return float(verify(gold, guess, timeout_seconds=5 if main else None))


def _column(name: str, values: Sequence[Any] | None, n: int, func: str) -> Sequence[Any]:
    if values is None:
        raise ValueError(f"`{func}` needs a `{name}` column in the batch (one value per prompt)")
    if len(values) != n:
        raise ValueError(f"`{name}` has {len(values)} values for {n} completions in `{func}`")
    return values


def accuracy_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    answer: Sequence[Any] | None = None,
    task: Sequence[str | None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    r"""1.0 when the completion's final answer is the reference answer, else 0.0.

    :func:`math_match` (math_verify) compares them, so ``"The answer is 19."`` matches ``"19"``
    and a GSM8K solution ``"… #### 19"``, and ``\boxed{\frac{1}{2}}`` matches ``"0.5"``. When the
    batch carries a ``task`` column naming a built-in training set
    (:data:`~sts_lightning.data.domains.TRAINING_SETS`, as
    :class:`~sts_lightning.training.data.PromptDataModule` adds), that task's reasoning-gym
    checker decides instead (:func:`~sts_lightning.data.domains.score_training_answer`, on
    :func:`extract_final_number`'s number, or on the completion without trailing punctuation for
    non-numeric answers such as ``"Yes"``); only a full score counts.

    Args:
        prompts: The prompts (strings or message lists), one per completion.
        completions: The completions: strings or ``[{"role": "assistant", "content": …}]``.
        answer: The reference answers (dataset column ``answer``; TRL's datasets call it
            ``solution``, which is read when ``answer`` is absent).
        task: Optional training-set names, one per completion.
        **kwargs: Other columns, ignored.

    Returns:
        One reward per completion; ``None`` where the reference holds no parseable answer and
        no checker is named, so that completion is left out of the baseline rather than
        scored 0.

    Example:
        >>> accuracy_reward(["q"] * 4, ["19", "It is 19.", "18", "no idea"], answer=["19"] * 4)
        [1.0, 1.0, 0.0, 0.0]
        >>> accuracy_reward(["q"], [r"so \boxed{72}"], answer=["3 * 24 = 72\n#### 72"])
        [1.0]
        >>> accuracy_reward(["q"] * 2, ["Yes.", "No"], answer=["Yes"] * 2, task=["syllogism"] * 2)
        [1.0, 0.0]
        >>> chat = [[{"role": "assistant", "content": r"\boxed{\frac{1}{2}}"}]]
        >>> accuracy_reward([[{"role": "user", "content": "q"}]], chat, solution=["1/2"])
        [1.0]
    """
    from sts_lightning.data.domains import TRAINING_SETS

    answer = kwargs.get("solution") if answer is None else answer
    answers = _column("answer", answer, len(completions), "accuracy_reward")
    rewards: list[float | None] = []
    for i, completion in enumerate(map(completion_text, completions)):
        name = None if task is None else task[i]
        if name in TRAINING_SETS:
            from sts_lightning.data.domains import score_training_answer
            from sts_lightning.data.prompts import Example

            numeric = extract_final_number(str(answers[i])) is not None
            guess = extract_final_number(completion) if numeric else completion.strip()
            example = Example(prompt=prompt_text(prompts[i]), answer=str(answers[i]))
            score = score_training_answer(name, (guess or "").rstrip(".!") or None, example)
            rewards.append(float(score == 1.0))
        else:
            rewards.append(math_match(completion, str(answers[i])))
    return rewards


def format_reward(
    prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
) -> list[float | None]:
    """1.0 when the completion is only a number (``"19"``, ``" -3.5."``, ``"$1,200"``), else 0.0.

    Pairs with an instruction such as "Give only the final answer." (the ``arithmetic``
    training set's): it rewards obeying the format whether or not the number is right.

    Args:
        prompts: The prompts (unused).
        completions: The completions: strings or ``[{"role": "assistant", "content": …}]``.
        **kwargs: Other columns, ignored.

    Returns:
        One reward per completion.

    Example:
        >>> format_reward(["q"] * 4, ["19", " -3.5.", "The answer is 19", ""])
        [1.0, 1.0, 0.0, 0.0]
    """
    texts = map(completion_text, completions)
    return [float(_BARE_NUMBER_RE.fullmatch(t) is not None) for t in texts]

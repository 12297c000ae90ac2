"""How GRPO calls reward functions: with the keywords TRL 1.16's ``GRPOTrainer`` passes.

Once per rollout, every function is called as::

    func(prompts=..., completions=..., completion_ids=..., **columns,
         trainer_state=..., log_extra=..., log_metric=...)

with one entry per completion (each prompt repeated ``G`` times):

- ``prompts``: the dataset's ``"prompt"`` values as given: strings, or message lists
  ``[{"role": "user", "content": ...}]`` for conversational data.
- ``completions``: decoded text (special tokens dropped); for conversational prompts each is a
  message list ``[{"role": "assistant", "content": text}]``, as in TRL.
- ``completion_ids``: the completion's token ids up to and including the first EOS.
- every other dataset column by name (``answer``, ``solution``, ``test``, …), except
  ``completion`` and ``completion_ids``, which TRL drops too.
- ``trainer_state``: a ``transformers.TrainerState`` built from the Lightning trainer
  (:func:`trainer_state`): ``global_step``, ``max_steps``, ``epoch``,
  ``num_input_tokens_seen``, …
- ``log_extra(column, values)`` and ``log_metric(name, value)``: :class:`RewardLog`'s, for a
  column of the completions table and a scalar logged as ``train/<name>``.

``None`` rewards become NaN (the completion leaves the group baseline). A function that raises,
or returns anything but one number or ``None`` per completion, gets an error naming it.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "RewardFunc",
    "RewardLog",
    "completion_text",
    "is_conversational",
    "prompt_text",
    "resolve_reward",
    "resolve_rewards",
    "reward_name",
    "score_completions",
    "trainer_state",
]

RewardFunc = Callable[..., Sequence[float | None]]
# TRL repeats every dataset column but these for the reward functions.
_NOT_COLUMNS = ("completion", "completion_ids")


def is_conversational(prompt: Any) -> bool:
    """A message list (TRL's test: a list whose first item is a dict with a ``"role"``).

    Example:
        >>> is_conversational([{"role": "user", "content": "Hi"}]), is_conversational("Hi")
        (True, False)
    """
    return (
        isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict)
        and "role" in prompt[0]
    )  # fmt: skip


def completion_text(completion: Any) -> str:
    """A completion's text: the string itself, or the contents of its messages joined.

    Example:
        >>> completion_text([{"role": "assistant", "content": "19"}]), completion_text("19")
        ('19', '19')
    """
    if isinstance(completion, str):
        return completion
    if is_conversational(completion):
        return "".join(str(m.get("content") or "") for m in completion)
    return "" if completion is None else str(completion)


def prompt_text(prompt: Any) -> str:
    """A prompt's text: the string itself, or the last user turn's content.

    Example:
        >>> prompt_text([{"role": "system", "content": "Be brief."},
        ...              {"role": "user", "content": "What is 1 + 1?"}])
        'What is 1 + 1?'
    """
    if is_conversational(prompt):
        users = [m for m in prompt if m.get("role") == "user"] or prompt
        return str(users[-1].get("content") or "")
    return "" if prompt is None else str(prompt)


class RewardLog:
    """What reward functions log through TRL's ``log_extra`` and ``log_metric`` keywords.

    Example:
        >>> log = RewardLog()
        >>> log.log_extra("parsed", ["1", "2"]); log.log_metric("hits", 1.0)
        >>> dict(log.extra), dict(log.metrics)
        ({'parsed': ['1', '2']}, {'hits': [1.0]})
    """

    def __init__(self) -> None:
        self.extra: dict[str, list[Any]] = defaultdict(list)
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def log_extra(self, column: str, values: Sequence[Any]) -> None:
        """Add ``values`` (one per completion) to the completions table's ``column``."""
        self.extra[column].extend(values)

    def log_metric(self, name: str, value: float) -> None:
        """Log a scalar; the values of a rollout are averaged (as TRL's ``_log_metric``)."""
        self.metrics[name].append(float(value))


def trainer_state(
    trainer: Any = None,
    batch_idx: int = 0,
    num_input_tokens_seen: int = 0,
    steps_per_batch: int = 1,
) -> Any:
    """The ``transformers.TrainerState`` TRL would pass as ``trainer_state``, from a Lightning
    trainer (``None``: the state before training).

    Args:
        trainer: The Lightning trainer, or ``None``.
        batch_idx: The batch about to be trained on (``epoch`` counts the ones done, as HF's).
        num_input_tokens_seen: Prompt and completion tokens of the rollouts before this one
            (TRL has added the current rollout's by the time it scores it).
        steps_per_batch: Optimizer steps per batch (``num_iterations``), for ``max_steps``
            when the trainer only knows its batches.

    Returns:
        A ``TrainerState``; ``max_steps`` is 0 (HF's default) when the run has no known end.
    """
    from transformers import TrainerState

    if trainer is None:
        return TrainerState(num_input_tokens_seen=num_input_tokens_seen)
    epoch = float(trainer.current_epoch)
    batches = trainer.num_training_batches
    if isinstance(batches, int) and batches > 0:
        epoch += batch_idx / batches
    max_steps = max(trainer.max_steps, 0)
    if max_steps == 0 and trainer.state.fn == "fit":
        estimated = trainer.estimated_stepping_batches
        max_steps = int(estimated) * steps_per_batch if math.isfinite(estimated) else 0
    return TrainerState(
        epoch=epoch,
        global_step=trainer.global_step,
        max_steps=max_steps,
        logging_steps=trainer.log_every_n_steps,
        num_train_epochs=max(trainer.max_epochs or 0, 0),
        num_input_tokens_seen=num_input_tokens_seen,
        is_local_process_zero=trainer.local_rank == 0,
        is_world_process_zero=trainer.is_global_zero,
    )


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
    reward_funcs: Sequence[RewardFunc],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    completion_ids: Sequence[Sequence[int]],
    columns: dict[str, Sequence[Any]],
    *,
    state: Any = None,
    log: RewardLog | None = None,
) -> torch.Tensor:
    """Call every reward function on the rollout, with TRL's keywords (module docstring).

    Args:
        reward_funcs: TRL-signature functions.
        prompts: One prompt per completion (each prompt repeated ``G`` times).
        completions: ``N`` completions: strings, or message lists for conversational prompts.
        completion_ids: Their token ids.
        columns: Other dataset columns, each with ``N`` values.
        state: Passed as ``trainer_state`` (:func:`trainer_state`).
        log: Receives ``log_extra``/``log_metric`` calls; ``None``: a throwaway one.

    Returns:
        ``(N, F)`` float32 rewards, NaN where a function returned ``None``.

    Raises:
        RuntimeError: A reward function raised (chained, naming the function).
        ValueError: A reward function returned other than one number or None per completion.
    """
    n, log = len(completions), log if log is not None else RewardLog()
    kwargs = {key: list(values) for key, values in columns.items() if key not in _NOT_COLUMNS}
    kwargs |= {"trainer_state": state, "log_extra": log.log_extra, "log_metric": log.log_metric}
    out = torch.full((n, len(reward_funcs)), math.nan)
    for j, func in enumerate(reward_funcs):
        name = reward_name(func)
        try:
            values = func(
                prompts=list(prompts),
                completions=list(completions),
                completion_ids=[list(c) for c in completion_ids],
                **kwargs,
            )
        except Exception as err:
            raise RuntimeError(
                f"reward function `{name}` raised {type(err).__name__}: {err}"
            ) from err
        out[:, j] = _as_rewards(values, n, name)
    return out


def _as_rewards(values: Any, n: int, name: str) -> torch.Tensor:
    """``(n,)`` float32 from a reward function's return value; ``None`` → NaN."""
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
    out = torch.full((n,), math.nan)
    for i, value in enumerate(values):
        if value is None:
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"reward function `{name}` returned {value!r} at index {i}; "
                "rewards must be floats or None"
            ) from err
    return out

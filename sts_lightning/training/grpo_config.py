"""GRPO's settings: :class:`GRPOConfig`, named and defaulted as TRL 1.16's ``GRPOConfig``.

A recipe's ``grpo:`` block is this dataclass; every field checks its value in ``__post_init__``,
so a bad value fails with the field's name before any model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from sts_lightning.config import (
    at_least,
    check_fields,
    non_negative_int,
    one_of,
    positive,
    positive_int,
)

__all__ = ["LOSS_TYPES", "GRPOConfig", "LossType", "ScaleRewards", "scale_mode"]

ScaleRewards = Literal["group", "batch", "none"] | bool
LossType = Literal["dapo", "bnpo", "grpo", "dr_grpo"]
LOSS_TYPES = ("dapo", "bnpo", "grpo", "dr_grpo")
# TRL's GRPOConfig maps True/False to "group"/"none" in __post_init__.
_SCALE = {True: "group", False: "none", "group": "group", "batch": "batch", "none": "none"}


def scale_mode(scale_rewards: ScaleRewards) -> str:
    """``"group"``, ``"batch"`` or ``"none"`` (``True``/``False`` as TRL maps them).

    Example:
        >>> scale_mode(True), scale_mode("batch"), scale_mode(False)
        ('group', 'batch', 'none')
    """
    one_of("scale_rewards", scale_rewards, _SCALE)
    return _SCALE[scale_rewards]


@dataclass
class GRPOConfig:
    """Sampling, loss and logging settings; names and defaults are TRL 1.16's ``GRPOConfig``.

    Kept different from TRL, and why:

    - ``gradient_checkpointing`` defaults to ``False`` (TRL: ``True``, from its
      ``TrainingArguments`` override): it costs ~30 % more time per step and small models do
      not need the memory.
    - ``micro_batch_size`` (not in TRL) stands for TRL's ``per_device_train_batch_size`` /
      ``steps_per_generation`` pair: a Lightning batch is one rollout, split into micro-batches
      whose gradients accumulate into one optimizer step.
    - Not offered: ``loss_type`` values other than the four below (``cispo``, ``sapo``, ``luspo``,
      ``vespo``), ``importance_sampling_level="sequence"``, ``multi_objective_aggregation=
      "normalize_then_sum"``, ``num_generations_eval`` (validation decodes one greedy
      completion per prompt), ``min_p``/``repetition_penalty`` (sampling must match the
      distribution the loss scores), vLLM, tools, and ``learning_rate`` and the other optimizer
      settings, which are :class:`~sts_lightning.training.grpo.GRPOModule` arguments.
    """

    num_generations: int = 8
    """Completions per prompt, G (the group the baseline is taken over); >= 2."""
    max_completion_length: int = 512
    """Completion budget in tokens (``max_new_tokens`` of HF ``generate``)."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are scored at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 disables it."""
    top_k: int = 0
    """Top-k sampling; 0 disables it."""
    beta: float = 0.0
    """KL coefficient to the reference; 0 (TRL's default) skips the reference entirely."""
    use_bias_correction_kl: bool = True
    """Multiply the KL of each token by its ratio (DeepSeek-V3.2): the unbiased reverse-KL
    gradient. The ratio carries grad, so it changes the KL gradient even on-policy."""
    epsilon: float = 0.2
    """Lower clip: the ratio is clipped below at 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip (1 + epsilon_high); ``None`` uses ``epsilon`` (DAPO suggests 0.28)."""
    num_iterations: int = 1
    """μ: optimizer steps on each rollout (old log-probs computed once per rollout)."""
    reward_weights: list[float] | None = None
    """One weight per reward function; ``None``: 1.0 each."""
    scale_rewards: ScaleRewards = "group"
    """Divide advantages by the group's std (``"group"``/``True``), the batch's (``"batch"``)
    or not at all (``"none"``/``False``, Dr. GRPO); booleans are stored as TRL maps them."""
    loss_type: LossType = "dapo"
    """Token aggregation: ``"dapo"`` (TRL 1.16 default: sum over all completion tokens of the
    global batch / their number), ``"bnpo"`` (same, local batch), ``"grpo"`` (mean over
    sequences of per-sequence means), ``"dr_grpo"`` (sum / (rows × max_completion_length))."""
    mask_truncated_completions: bool = False
    """Leave completions without EOS out of the loss (DAPO)."""
    log_completions: bool = False
    """Log a table of (step, prompt, completion, rewards, advantage) every training step, to a
    W&B logger (other loggers skip it)."""
    micro_batch_size: int | None = None
    """Rows per forward/backward pass (gradients accumulate over the rollout); ``None``: all."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory (large models)."""
    disable_dropout: bool = False
    """Set every dropout probability to 0 (keeps the ratio at 1 on the first iteration)."""

    def __post_init__(self) -> None:
        names = ("num_generations", "max_completion_length", "num_iterations")
        check_fields(self, positive_int, *names)
        at_least("num_generations", self.num_generations, 2)  # the group baseline needs two
        self.scale_rewards = scale_mode(self.scale_rewards)
        one_of("loss_type", self.loss_type, LOSS_TYPES)
        positive("temperature", self.temperature)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}")
        non_negative_int("top_k", self.top_k)
        check_fields(self, at_least, "beta", "epsilon", low=0.0)
        if self.epsilon_high is not None:
            at_least("epsilon_high", self.epsilon_high, 0.0)
        if self.micro_batch_size is not None:
            positive_int("micro_batch_size", self.micro_batch_size)
        if self.reward_weights is not None:
            self.reward_weights = _weights(self.reward_weights)


def _weights(values: object) -> list[float]:
    """``values`` as a list of finite floats, or a ``ValueError`` naming ``reward_weights``."""
    ok = isinstance(values, (list, tuple)) and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in values
    )
    if not ok or not values:
        raise ValueError(
            f"`reward_weights` must be a non-empty list of finite numbers, got {values!r}"
        )
    return [float(w) for w in values]

"""The optimizer and learning-rate schedule of SFTModule and GRPOModule, built as TRL's trainers
build them, and chosen from YAML.

- **Optimizer**: any callable taking parameter groups. In a recipe it is a class and its
  arguments, which LightningCLI turns into that callable::

      optimizer:
        class_path: torch.optim.SGD
        init_args: {momentum: 0.9}

  The default is AdamW (the fused kernel where it exists). The peak rate and the decay are the
  module's ``learning_rate`` and ``weight_decay`` (TRL's names), set on every parameter group:
  one place for each, so a schedule and a log always agree on the rate. As in HF's ``Trainer``,
  biases and norm weights (1-D parameters) are never decayed.
- **Schedule**: :func:`transformers.get_scheduler` by name (``lr_scheduler_type``: ``linear``,
  ``cosine``, ``cosine_with_min_lr``, ``constant_with_warmup``, ...) with ``lr_scheduler_kwargs``
  (e.g. ``{"min_lr_rate": 0.1}``), stepped once per optimizer step. ``warmup_steps`` follows
  transformers 5: a number of steps when ≥ 1, a fraction of the run (rounded up) when below 1
  (it replaces TRL's older ``warmup_ratio``).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = [
    "OptimizerCallable",
    "build_optimizer",
    "build_scheduler",
    "check_schedule",
    "configure",
    "fused_allowed",
    "run_length",
    "warmup_count",
]

log = logging.getLogger(__name__)

OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]
"""Builds an optimizer from parameter groups (a class, a ``functools.partial``, a function)."""

# transformers' SchedulerType names that step on the optimizer step alone (the plateau and greedy
# schedules need a monitored metric, which these modules do not pass).
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)
# Those that need the run's length.
_NEED_TOTAL = {"linear", "cosine", "cosine_with_restarts", "polynomial", "cosine_with_min_lr"}
_NEED_TOTAL |= {"cosine_warmup_with_min_lr"}


def check_schedule(
    learning_rate: float,
    weight_decay: float,
    warmup_steps: int | float,
    lr_scheduler_type: str,
    lr_scheduler_kwargs: dict[str, Any] | None,
) -> None:
    """Raise ``ValueError`` naming the first bad setting (modules call it in ``__init__``)."""
    if not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be a number > 0, got {learning_rate!r}")
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"`weight_decay` must be a number >= 0, got {weight_decay!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, float)):
        raise ValueError(f"`warmup_steps` must be an int or a float, got {warmup_steps!r}")
    if warmup_steps < 0:
        raise ValueError(
            "`warmup_steps` must be a number of steps (>= 1) or a fraction of the run (in "
            f"[0, 1)), got {warmup_steps!r}"
        )
    if lr_scheduler_type not in SCHEDULERS:
        raise ValueError(
            f"`lr_scheduler_type` must be one of {list(SCHEDULERS)}, got {lr_scheduler_type!r}"
        )
    if lr_scheduler_kwargs is not None and not isinstance(lr_scheduler_kwargs, dict):
        raise ValueError(f"`lr_scheduler_kwargs` must be a dict, got {lr_scheduler_kwargs!r}")


def warmup_count(warmup_steps: int | float, total: float) -> int:
    """Warm-up length in optimizer steps, as transformers 5's ``TrainingArguments``.

    Example:
        >>> warmup_count(3, 100), warmup_count(0.1, 95), warmup_count(0.0, 10)
        (3, 10, 0)
    """
    if warmup_steps >= 1:
        return int(warmup_steps)
    if warmup_steps > 0 and not math.isfinite(total):
        raise ValueError(
            f"`warmup_steps={warmup_steps}` is a fraction of the run, whose length is unknown: "
            "set `Trainer(max_steps=...)` or give a number of steps"
        )
    return math.ceil(total * warmup_steps) if warmup_steps > 0 else 0


def run_length(trainer, *, steps_per_batch: int = 1) -> float:
    """Optimizer steps in ``trainer``'s run; ``inf`` when unknown (an unsized loader without
    ``max_steps``).

    Args:
        trainer: The Lightning trainer (``None``: unknown).
        steps_per_batch: Optimizer steps a manual-optimization module takes per batch (GRPO's
            ``num_iterations``); ``max_steps`` already counts optimizer steps.
    """
    if trainer is None:
        return math.inf
    if trainer.max_steps > 0:
        return float(trainer.max_steps)
    batches = float(trainer.estimated_stepping_batches)
    return batches * steps_per_batch if math.isfinite(batches) else math.inf


def _parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise RuntimeError("the model has no trainable parameters")
    groups = [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _scaler(trainer):
    """The trainer's gradient scaler (16-mixed), else ``None``."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)


def fused_allowed(trainer) -> bool:
    """Whether a fused optimizer fits ``trainer``: not with a gradient scaler (``16-mixed``).

    A fused kernel unscales a scaler's gradients inside its step, after Lightning would clip
    them, so Lightning's mixed-precision plugin refuses to clip its gradients. ``bf16-mixed``
    has no scaler, so nothing is unscaled and the fused kernel (faster than ``foreach``) is
    kept: :func:`configure` marks it as one that leaves scaling alone.
    """
    return _scaler(trainer) is None


def _no_scaler_to_handle(optimizer: torch.optim.Optimizer, trainer) -> None:
    # Lightning's mixed-precision plugin refuses to clip the gradients of an optimizer that says
    # it unscales them in its step (fused kernels do). Without a scaler there is nothing to
    # unscale: say so, and bf16-mixed clips the fused optimizer's gradients as fp32 does.
    if _scaler(trainer) is None and getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer._step_supports_amp_scaling = False


def _default_adamw(groups: list[dict[str, Any]], fused: bool) -> torch.optim.Optimizer:
    if not fused:
        return torch.optim.AdamW(groups)
    try:  # the fused kernel: one launch for all parameters (CPU since torch 2.4, CUDA)
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, ValueError) as err:
        log.info("fused AdamW unavailable (%s); using the foreach implementation", err)
        return torch.optim.AdamW(groups)


def _check_not_overridden(optimizer: torch.optim.Optimizer, learning_rate, weight_decay) -> None:
    """The optimizer's own ``lr`` / ``weight_decay`` must be left at their defaults: the module's
    settings replace them, and a value set in two places would be silently dropped in one."""
    try:
        signature = inspect.signature(type(optimizer)).parameters
    except (TypeError, ValueError):  # a C extension or an odd wrapper: nothing to compare with
        return
    for key, ours, name in (("lr", learning_rate, "learning_rate"),
                            ("weight_decay", weight_decay, "weight_decay")):  # fmt: skip
        given, default = optimizer.defaults.get(key), signature.get(key)
        default = default.default if default is not None else inspect.Parameter.empty
        if given is None or default is inspect.Parameter.empty or given in (default, ours):
            continue
        raise ValueError(
            f"the optimizer was given {key}={given!r}; set the module's `{name}` instead "
            f"(it is {ours!r} and applies to every parameter group)"
        )


def build_optimizer(
    module: torch.nn.Module,
    optimizer: OptimizerCallable | None,
    *,
    learning_rate: float,
    weight_decay: float,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """The optimizer over ``module``'s trainable parameters (decay on matrices only).

    Args:
        module: Whose parameters with ``requires_grad`` are optimised.
        optimizer: Builds it from parameter groups; ``None``: AdamW.
        learning_rate: Peak rate, set on every group.
        weight_decay: Decay of the ≥ 2-D parameters.
        fused: Let the default AdamW use its fused kernel (see :func:`fused_allowed`).
    """
    groups = _parameter_groups(module, weight_decay)
    opt = _default_adamw(groups, fused) if optimizer is None else optimizer(groups)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"`optimizer` must build a torch.optim.Optimizer, got {type(opt)!r}")
    _check_not_overridden(opt, learning_rate, weight_decay)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] = learning_rate
    return opt


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    lr_scheduler_type: str,
    *,
    warmup_steps: int | float,
    total: float,
    lr_scheduler_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Lightning's scheduler config: ``transformers.get_scheduler``, once per optimizer step.

    Args:
        optimizer: The optimizer whose rates it scales.
        lr_scheduler_type: A transformers schedule name (see :data:`SCHEDULERS`).
        warmup_steps: Steps (≥ 1) or a fraction of ``total`` (< 1).
        total: Optimizer steps in the run (``inf`` when unknown).
        lr_scheduler_kwargs: The schedule's own arguments (``min_lr_rate``, ``num_cycles``, ...).
    """
    from transformers import get_scheduler

    if lr_scheduler_type in _NEED_TOTAL and not math.isfinite(total):
        raise ValueError(
            f"`lr_scheduler_type={lr_scheduler_type!r}` needs the run's length, which is unknown "
            "(an unsized dataset without `max_steps`): set `Trainer(max_steps=...)` or use "
            "'constant_with_warmup'"
        )
    steps = int(total) if math.isfinite(total) else None
    try:
        scheduler = get_scheduler(
            lr_scheduler_type,
            optimizer,
            num_warmup_steps=warmup_count(warmup_steps, total),
            num_training_steps=steps,
            scheduler_specific_kwargs=dict(lr_scheduler_kwargs or {}),
        )
    except TypeError as err:  # an argument the schedule does not take
        raise ValueError(
            f"`lr_scheduler_kwargs` {lr_scheduler_kwargs!r} do not fit "
            f"`lr_scheduler_type={lr_scheduler_type!r}`: {err}"
        ) from err
    return {"scheduler": scheduler, "interval": "step"}


def configure(module, optimizer: OptimizerCallable | None, settings, total: float) -> dict:
    """``configure_optimizers``' answer for a module whose ``settings`` (its hparams) hold
    ``learning_rate``, ``weight_decay``, ``warmup_steps``, ``lr_scheduler_type`` and
    ``lr_scheduler_kwargs``; ``total`` optimizer steps in the run."""
    opt = build_optimizer(
        module,
        optimizer,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        fused=fused_allowed(module._trainer),
    )
    _no_scaler_to_handle(opt, module._trainer)
    scheduler = build_scheduler(
        opt,
        settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        total=total,
        lr_scheduler_kwargs=settings.lr_scheduler_kwargs,
    )
    return {"optimizer": opt, "lr_scheduler": scheduler}

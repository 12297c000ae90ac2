"""How :class:`~sts_lightning.training.grpo.GRPOModule` logs a training step, as TRL 1.16 does.

- :func:`log_train_step`: TRL's metrics (:mod:`~sts_lightning.training.grpo_metrics`) as
  ``train/<key>``, over the rollout gathered from every rank, plus ``train/num_tokens``
  (prompt and completion tokens so far) and what reward functions logged with ``log_metric``
  (the mean of a rollout's calls, over every rank, as TRL).
- With ``GRPOConfig.log_completions``, a table of (step, prompt, completion, each function's
  reward, every ``log_extra`` column, advantage) of the rollout, TRL's ``completions`` table:
  :meth:`WandbLogger.log_table` on each W&B logger; without one it is skipped, said once.

Glue only: the numbers come from :mod:`~sts_lightning.training.grpo_metrics`. Validation does
not log ``log_metric`` values (its reward functions get a throwaway log).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from sts_lightning.training import grpo_metrics as metrics
from sts_lightning.training.reward_calls import RewardLog

__all__ = ["all_objects", "completions_table", "log_train_step", "logged_metrics"]


def all_objects(trainer: Any, obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` on one process); a collective."""
    if trainer is None or trainer.world_size == 1:
        return [obj]
    out: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def logged_metrics(trainer: Any, log: RewardLog) -> dict[str, float]:
    """The mean of each ``log_metric`` name's values over every rank's calls (TRL's)."""
    totals: dict[str, list[float]] = {}
    for stats in all_objects(trainer, {k: (sum(v), len(v)) for k, v in log.metrics.items()}):
        for name, (total, count) in stats.items():
            pooled = totals.setdefault(name, [0.0, 0])
            pooled[0], pooled[1] = pooled[0] + total, pooled[1] + count
    return {name: total / count for name, (total, count) in sorted(totals.items()) if count}


def _cell(value: Any) -> Any:
    """A message list as JSON text (W&B tables hold scalars and strings)."""
    return value if isinstance(value, (str, int, float, type(None))) else json.dumps(value)


def completions_table(
    step: int,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    rewards_per_func: torch.Tensor,
    reward_names: Sequence[str],
    advantages: torch.Tensor,
    extra: dict[str, Sequence[Any]] | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of TRL's completions table: ``step``, ``prompt``, ``completion``,
    one column per reward function (NaN: None), the ``log_extra`` columns, ``advantage``.

    Example:
        >>> cols, rows = completions_table(3, ["q"], ["a"], torch.ones(1, 1), ["f"],
        ...                                torch.zeros(1), {"parsed": ["1"]})
        >>> cols
        ['step', 'prompt', 'completion', 'f', 'parsed', 'advantage']
        >>> rows
        [[3, 'q', 'a', 1.0, '1', 0.0]]
    """
    extra = extra or {}
    columns = ["step", "prompt", "completion", *reward_names, *extra, "advantage"]
    rewards, adv = rewards_per_func.tolist(), advantages.tolist()
    rows = [
        [step, _cell(prompts[i]), _cell(completions[i]), *rewards[i]]
        + [_cell(values[i]) for values in extra.values()]
        + [adv[i]]
        for i in range(len(prompts))
    ]
    return columns, rows


def _log_table(module: Any, rollout: dict[str, Any], per_func, advantages, log) -> None:
    """Gather the rollout's texts and ``log_extra`` columns; rank 0 logs the table."""
    from lightning.pytorch.loggers import WandbLogger

    trainer, n = module._trainer, len(rollout["prompts"])
    names = sorted(set().union(*all_objects(trainer, list(log.extra))))  # same order everywhere
    local = (
        rollout["prompts"],
        rollout["completions"],
        [log.extra.get(c, [None] * n) for c in names],
    )
    parts = all_objects(trainer, local)
    if trainer is not None and not trainer.is_global_zero:
        return
    prompts = [p for part in parts for p in part[0]]
    completions = [c for part in parts for c in part[1]]
    extra = {c: [v for part in parts for v in part[2][j]] for j, c in enumerate(names)}
    columns, rows = completions_table(
        module.global_step, prompts, completions, per_func, module.reward_names, advantages, extra
    )
    wandb = [lg for lg in (module.loggers if trainer else []) if isinstance(lg, WandbLogger)]
    for logger in wandb:
        logger.log_table(key="completions", columns=columns, data=rows)
    if not wandb and not getattr(module, "_noted_no_table", False):
        module._noted_no_table = True
        rank_zero_info("log_completions: no WandbLogger among the loggers; the table is skipped")


def log_train_step(
    module: Any,
    rollout: dict[str, Any],
    rewards: torch.Tensor,
    rewards_per_func: torch.Tensor,
    advantages: torch.Tensor,
    sums: Sequence[dict[str, float]],
    log: RewardLog,
) -> None:
    """Log one rollout and its ``μ`` updates as ``train/<TRL key>`` (module docstring); its
    prompt and completion tokens, from every rank, are added to ``module.tokens_seen`` first.

    Args:
        module: The GRPO module (its ``grpo`` settings, ``_gather``, ``reward_names``).
        rollout: The local rollout (``length``, ``truncated``, ``prompts``, ``completions``).
        rewards: ``(N_global,)`` combined rewards, gathered over ranks.
        rewards_per_func: ``(N_global, F)``, gathered.
        advantages: ``(N_global,)``.
        sums: One dict of loss and token sums per optimizer step on this rank.
        log: What the reward functions logged.
    """
    cfg, trainer = module.grpo, module._trainer
    tokens = (rollout["prompt_length"] + rollout["length"]).sum().long().reshape(1)
    module.tokens_seen += module._gather(tokens).sum()
    stats = metrics.reward_metrics(
        rewards, rewards_per_func, module.reward_names, cfg.num_generations, cfg.scale_rewards
    )
    stats |= metrics.completion_metrics(
        module._gather(rollout["length"]), module._gather(rollout["truncated"].float())
    )
    keys = [k for k in sums[0] if k != "loss"]
    local = torch.tensor([[s[k] for k in keys] for s in sums], dtype=torch.float64).sum(0)
    pooled = module._gather(local.to(module.device)[None]).sum(0).tolist()  # over ranks
    loss = module._gather(
        torch.tensor([sum(s["loss"] for s in sums) / len(sums)]).to(module.device)
    )
    update = {"loss": loss.mean().item(), **dict(zip(keys, pooled, strict=True))}
    stats |= metrics.update_metrics(update, kl=cfg.beta != 0.0)
    stats |= logged_metrics(trainer, log)
    stats["num_tokens"] = module.tokens_seen.double()
    batch_size = rollout["completion_mask"].size(0) // cfg.num_generations
    # Every value is global already (gathered), so equal on every rank: no sync_dist.
    module.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                    batch_size=batch_size)  # fmt: skip
    module.log("lr", module.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False,
               batch_size=batch_size)  # fmt: skip
    every = trainer.log_every_n_steps if trainer is not None else 1
    if cfg.log_completions and (module.global_step // cfg.num_iterations) % every == 0:
        _log_table(module, rollout, rewards_per_func, advantages, log)

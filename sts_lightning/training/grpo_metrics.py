"""What GRPO logs, as pure tensor functions (TRL 1.16's metric names, under ``grpo/``).

- :func:`rollout_metrics`: reward statistics of a (gathered) training rollout.
- :func:`update_metrics`: loss, clip ratio and KL of the ``μ`` optimizer steps on it.
- :func:`validation_sums` and :func:`validation_metrics`: mean rewards per validation loader,
  from sums that add up over batches and ranks.

No Lightning: :class:`~sts_lightning.training.grpo.GRPOModule` logs what these return.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sts_lightning.training.grpo_loss import nanstd

__all__ = ["rollout_metrics", "update_metrics", "validation_metrics", "validation_sums"]


def rollout_metrics(
    rewards: Tensor, rewards_per_func: Tensor, reward_names: Sequence[str], num_generations: int
) -> dict[str, Tensor]:
    """Mean and std of the rewards, the share of groups without signal, each function's mean.

    Args:
        rewards: ``(N,)`` combined rewards, groups of ``num_generations`` contiguous; NaN where
            no function could score.
        rewards_per_func: ``(N, F)``.
        reward_names: ``F`` names.
        num_generations: ``G``.

    Example:
        >>> m = rollout_metrics(torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.ones(4, 1), ["f"], 2)
        >>> m["grpo/frac_reward_zero_std"].item(), m["grpo/rewards/f"].item()
        (0.5, 1.0)
    """
    zero_std = nanstd(rewards.view(-1, num_generations), dim=1).nan_to_num(0.0) < 1e-8
    metrics = {
        "grpo/reward_mean": torch.nanmean(rewards),
        "grpo/reward_std": nanstd(rewards),
        "grpo/frac_reward_zero_std": zero_std.float().mean(),
    }
    for j, name in enumerate(reward_names):
        metrics[f"grpo/rewards/{name}"] = torch.nanmean(rewards_per_func[:, j])
    return metrics


def update_metrics(
    sums: Sequence[dict[str, float]], lengths: Tensor, *, kl: bool
) -> dict[str, float | Tensor]:
    """Mean loss over the optimizer steps; clip ratio (and KL) per completion token.

    Args:
        sums: One ``{"loss", "kl", "clipped", "tokens"}`` per optimizer step on the rollout.
        lengths: ``(N,)`` completion lengths.
        kl: Include ``grpo/kl`` (``beta != 0``).
    """
    tokens = max(sum(s["tokens"] for s in sums), 1.0)
    metrics = {
        "train/loss": sum(s["loss"] for s in sums) / len(sums),
        "grpo/completion_length": lengths.mean(),
        "grpo/clip_ratio": sum(s["clipped"] for s in sums) / tokens,
    }
    if kl:
        metrics["grpo/kl"] = sum(s["kl"] for s in sums) / tokens
    return metrics


def validation_sums(rewards: Tensor, rewards_per_func: Tensor) -> Tensor:
    """``(2, 1 + F)``: sums and counts of the non-NaN combined and per-function rewards.

    Example:
        >>> validation_sums(torch.tensor([1.0, float("nan")]), torch.tensor([[1.0], [0.0]]))
        tensor([[1., 1.],
                [1., 2.]], dtype=torch.float64)
    """
    values = torch.cat([rewards[:, None], rewards_per_func], 1).double()  # (B, 1 + F)
    return torch.stack([values.nansum(0), (~values.isnan()).sum(0).double()])


def validation_metrics(
    names: Sequence[str], sums: Tensor, reward_names: Sequence[str]
) -> dict[str, Tensor]:
    """Mean reward per loader, their unweighted mean, and each function's pooled mean.

    Args:
        names: Loader names.
        sums: ``(loaders, 2, 1 + F)`` from :func:`validation_sums`, summed over batches.
        reward_names: ``F`` names.

    Returns:
        fp32 scalars; NaN where nothing was scorable.
    """
    means = sums[:, 0] / sums[:, 1]  # (loaders, 1 + F)
    metrics = {f"val/reward/{name}": means[i, 0] for i, name in enumerate(names)}
    metrics["val/reward"] = means[:, 0].nanmean()  # unweighted over loaders, as SFT's val/loss
    pooled = sums.sum(0)
    for j, name in enumerate(reward_names, start=1):
        metrics[f"val/rewards/{name}"] = pooled[0, j] / pooled[1, j]
    return {k: v.float() for k, v in metrics.items()}

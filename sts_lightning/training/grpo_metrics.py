"""What GRPO logs, as pure tensor functions, under TRL 1.16's metric names.

The functions return TRL's bare ``_metrics`` keys (``reward``, ``rewards/<func>/mean``,
``completions/mean_length``, ``clip_ratio/region_mean``, …);
:class:`~sts_lightning.training.grpo.GRPOModule` logs them as ``train/<key>``, which is where
TRL's keys land in W&B (the HF integration logs training metrics under ``train/``), and
validation's as ``val/<key>`` (TRL: ``eval/<key>``).

- :func:`reward_metrics`: reward statistics of a (gathered) training rollout.
- :func:`completion_metrics`: completion lengths and the share cut at the budget.
- :func:`update_metrics`: loss, KL, entropy and clip ratios of the ``μ`` optimizer steps.
- :func:`validation_sums` and :func:`validation_metrics`: validation's rewards and lengths, from
  sums that add up over batches and ranks (one greedy completion per prompt).

No Lightning: :class:`~sts_lightning.training.grpo.GRPOModule` logs what these return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from sts_lightning.training.grpo_config import scale_mode
from sts_lightning.training.grpo_loss import nanstd

__all__ = [
    "completion_metrics",
    "reward_metrics",
    "update_metrics",
    "validation_metrics",
    "validation_sums",
]


def reward_metrics(
    rewards: Tensor,
    rewards_per_func: Tensor,
    reward_names: Sequence[str],
    num_generations: int,
    scale_rewards: str | bool = "group",
) -> dict[str, Tensor]:
    """Each function's mean and std, the combined reward's, the share without signal.

    ``frac_reward_zero_std`` is TRL's: the share of completions whose std (their group's, or
    the batch's with ``scale_rewards="batch"``) is 0; a group with fewer than two scored
    completions has a NaN std, which does not count as 0.

    Args:
        rewards: ``(N,)`` combined rewards, groups of ``num_generations`` contiguous; NaN where
            no function could score.
        rewards_per_func: ``(N, F)``.
        reward_names: ``F`` names.
        num_generations: ``G``.
        scale_rewards: Which std the advantages divide by (``GRPOConfig.scale_rewards``).

    Example:
        >>> m = reward_metrics(torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.ones(4, 1), ["f"], 2)
        >>> m["frac_reward_zero_std"].item(), m["rewards/f/mean"].item(), m["reward"].item()
        (0.5, 1.0, 0.75)
    """
    metrics = {}
    for j, name in enumerate(reward_names):
        metrics[f"rewards/{name}/mean"] = torch.nanmean(rewards_per_func[:, j])
        metrics[f"rewards/{name}/std"] = nanstd(rewards_per_func[:, j])
    if scale_mode(scale_rewards) == "batch":
        std = nanstd(rewards).expand(1)
    else:
        std = nanstd(rewards.view(-1, num_generations), dim=1)  # (B,): one per group
    metrics["reward"] = torch.nanmean(rewards)
    metrics["reward_std"] = nanstd(rewards)
    metrics["frac_reward_zero_std"] = torch.isclose(std, torch.zeros_like(std)).float().mean()
    return metrics


def completion_metrics(lengths: Tensor, truncated: Tensor) -> dict[str, Tensor]:
    """Lengths of all completions and of those that ended with EOS; the share truncated.

    Args:
        lengths: ``(N,)`` completion tokens (up to and including the first EOS).
        truncated: ``(N,)`` bool: no EOS within the budget.

    Returns:
        TRL's ``completions/*`` keys; the terminated ones are 0 when none terminated (as TRL).

    Example:
        >>> m = completion_metrics(torch.tensor([2.0, 4.0, 8.0]), torch.tensor([0, 0, 1]).bool())
        >>> m["completions/mean_terminated_length"].item(), m["completions/clipped_ratio"].item()
        (3.0, 0.3333333432674408)
    """
    lengths = lengths.float()
    ended = lengths[~truncated.bool()]
    ended = ended if ended.numel() else torch.zeros(1, device=lengths.device)
    metrics = {"completions/clipped_ratio": truncated.float().mean()}
    for name, values in (("", lengths), ("_terminated", ended)):
        metrics[f"completions/mean{name}_length"] = values.mean()
        metrics[f"completions/min{name}_length"] = values.min()
        metrics[f"completions/max{name}_length"] = values.max()
    return metrics


def update_metrics(sums: Mapping[str, float], *, kl: bool) -> dict[str, float]:
    """Loss, and per-token means of KL, entropy and the clip indicators of the update.

    Args:
        sums: ``loss`` (the mean loss of the ``μ`` steps) and token sums pooled over the steps
            (and ranks): ``kl``, ``entropy``, ``clipped_low``, ``clipped_high``, ``tokens``.
        kl: Include ``kl`` (``beta != 0``, as TRL).

    Returns:
        ``loss``, ``entropy``, ``clip_ratio/{low,high,region}_mean`` and maybe ``kl``. TRL
        averages per-micro-batch means; these pool the tokens, the same without micro-batches.

    Example:
        >>> s = {"loss": 0.5, "kl": 1.0, "entropy": 8.0, "clipped_low": 1.0,
        ...      "clipped_high": 0.0, "tokens": 4.0}
        >>> update_metrics(s, kl=True)["clip_ratio/region_mean"]
        0.25
    """
    tokens = max(sums["tokens"], 1.0)
    low, high = sums["clipped_low"] / tokens, sums["clipped_high"] / tokens
    metrics = {
        "loss": sums["loss"],
        "entropy": sums["entropy"] / tokens,
        "clip_ratio/low_mean": low,
        "clip_ratio/high_mean": high,
        "clip_ratio/region_mean": low + high,  # disjoint: opposite advantage signs
    }
    if kl:
        metrics["kl"] = sums["kl"] / tokens
    return metrics


def validation_sums(
    rewards: Tensor, rewards_per_func: Tensor, lengths: Tensor, truncated: Tensor
) -> Tensor:
    """``(3, 3 + F)``: sums, sums of squares and counts of the non-NaN values of the columns
    (combined reward, each function's reward, completion length, truncated).

    Example:
        >>> validation_sums(torch.tensor([1.0, float("nan")]), torch.tensor([[1.0], [0.0]]),
        ...                 torch.tensor([2.0, 4.0]), torch.tensor([False, True]))[:, 0]
        tensor([1., 1., 1.], dtype=torch.float64)
    """
    values = torch.cat(
        [rewards[:, None], rewards_per_func, lengths[:, None], truncated[:, None]], 1
    ).double()  # (B, 3 + F)
    present = ~values.isnan()
    return torch.stack([values.nansum(0), (values**2).nansum(0), present.sum(0).double()])


def validation_metrics(
    names: Sequence[str], sums: Tensor, reward_names: Sequence[str]
) -> dict[str, Tensor]:
    """Per loader ``val/reward/<name>``; pooled ``val/reward``, ``val/reward_std``, each
    function's mean and std, ``val/completions/mean_length`` and ``…/clipped_ratio``.

    Args:
        names: Loader names.
        sums: ``(loaders, 3, 3 + F)`` from :func:`validation_sums`, summed over batches.
        reward_names: ``F`` names.

    Returns:
        fp32 scalars; NaN where nothing was scorable. ``reward`` is the unweighted mean of the
        loaders' means (as SFT's ``val/loss``); the other statistics pool every prompt.
    """
    means = sums[:, 0] / sums[:, 2]  # (loaders, 3 + F): sums / counts
    metrics = {f"reward/{name}": means[i, 0] for i, name in enumerate(names)}
    metrics["reward"] = means[:, 0].nanmean()
    total, squares, count = sums.sum(0)  # each (3 + F,)
    mean = total / count
    std = ((squares - count * mean**2) / (count - 1)).clamp(min=0).sqrt()  # Bessel, as nanstd
    std = torch.where(count > 1, std, torch.nan)
    metrics["reward_std"] = std[0]
    for j, name in enumerate(reward_names, start=1):
        metrics[f"rewards/{name}/mean"], metrics[f"rewards/{name}/std"] = mean[j], std[j]
    metrics["completions/mean_length"] = mean[-2]
    metrics["completions/clipped_ratio"] = mean[-1]
    return {f"val/{k}": v.float() for k, v in metrics.items()}

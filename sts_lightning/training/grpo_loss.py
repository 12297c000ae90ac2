"""GRPO's math as pure tensor functions; mirrors TRL 1.16's ``GRPOTrainer``.

- :func:`combine_rewards`: weighted sum over reward functions, NaN when every one is NaN.
- :func:`grpo_advantages`: group-relative advantages (``scale_rewards``).
- :func:`grpo_loss`: clipped surrogate + k3 KL, aggregated per ``loss_type``.

No Lightning, no I/O: :class:`~sts_lightning.training.grpo.GRPOModule` calls these. The
settings live in :mod:`sts_lightning.training.grpo_config` (:class:`GRPOConfig`, re-exported).
"""

from __future__ import annotations

import torch

from sts_lightning.config import at_least, positive_int
from sts_lightning.training.grpo_config import (
    LOSS_TYPES,
    GRPOConfig,
    LossType,
    ScaleRewards,
    scale_mode,
)

__all__ = [
    "GRPOConfig",
    "combine_rewards",
    "grpo_advantages",
    "grpo_loss",
    "nanstd",
    "rollout_loss",
]


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Standard deviation ignoring NaNs, with Bessel's correction (TRL's ``nanstd``).

    Example:
        >>> nanstd(torch.tensor([1.0, 0.0, float("nan"), 0.0])).item()
        0.5773502588272095
    """
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~x.isnan()).sum(dim=dim)
    var = torch.nanmean((x - mean) ** 2, dim=dim) * count / (count - 1)
    return torch.where(count > 1, var, torch.nan).sqrt()


def combine_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over reward functions ``(N, F) → (N,)``; NaN (None) entries are skipped and
    a row where every function returned None stays NaN (excluded from the baseline).

    Example:
        >>> nan = float("nan")
        >>> combine_rewards(torch.tensor([[1.0, 0.5], [nan, 1.0], [nan, nan]]),
        ...                 torch.tensor([1.0, 2.0]))
        tensor([2., 2., nan])
    """
    total = (rewards_per_func * weights.to(rewards_per_func)).nansum(dim=1)
    return total.masked_fill(rewards_per_func.isnan().all(dim=1), torch.nan)


def grpo_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: ScaleRewards = True
) -> torch.Tensor:
    """Group-relative advantages: each reward minus its group's mean, over the group's std.

    Groups are ``num_generations`` consecutive entries (the completions of one prompt). The
    std is Bessel-corrected and offset by 1e-4, and NaN rewards (unscorable completions) are
    left out of the mean and std and get advantage 0, as in TRL.

    Args:
        rewards: Summed rewards ``(B * G,)``, groups contiguous.
        num_generations: ``G``.
        scale_rewards: ``True``/``"group"``: divide by the group std; ``"batch"``: by the std
            of all rewards; ``False``/``"none"``: do not divide (Dr. GRPO).

    Returns:
        ``(B * G,)`` advantages.

    Example:
        Group 1 = [1, 0, 0, 0]: mean 0.25, std sqrt((0.75² + 3 · 0.25²) / 3) = 0.5, so the
        advantages are [0.75, -0.25, -0.25, -0.25] / 0.5001; group 2 has no spread → 0.

        >>> r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
        >>> grpo_advantages(r, 4).tolist()  # doctest: +ELLIPSIS
        [1.4997..., -0.4999..., -0.4999..., -0.4999..., 0.0, 0.0, 0.0, 0.0]
        >>> grpo_advantages(r, 4, scale_rewards=False).tolist()
        [0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]
    """
    positive_int("num_generations", num_generations)
    at_least("num_generations", num_generations, 2)
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"`rewards` must be 1-D with a multiple of num_generations={num_generations} "
            f"entries, got shape {tuple(rewards.shape)}"
        )
    scale = scale_mode(scale_rewards)
    groups = rewards.view(-1, num_generations)  # (B, G)
    advantages = (groups - torch.nanmean(groups, dim=1, keepdim=True)).flatten()
    if scale == "group":
        advantages = advantages / (nanstd(groups, dim=1).repeat_interleave(num_generations) + 1e-4)
    elif scale == "batch":
        advantages = advantages / (nanstd(rewards) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    use_bias_correction_kl: bool = True,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: LossType = "dapo",
    normalizer: float | torch.Tensor | None = None,
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of a batch of completions (TRL's ``_compute_loss``, token-level ratios).

    Args:
        logps: Policy log-probs of the completion tokens, with grad, ``(N, C)``.
        old_logps: The same under the policy that sampled them, ``(N, C)``.
        advantages: ``(N,)``.
        mask: 1 on completion tokens, ``(N, C)``.
        ref_logps: Reference log-probs ``(N, C)``, needed when ``beta > 0``.
        beta: KL coefficient.
        use_bias_correction_kl: Multiply the k3 KL of each token by its ratio (TRL 1.16's
            default): the ratio carries grad, so this changes the KL gradient even on-policy.
        epsilon: Lower clip (ratio >= 1 - epsilon).
        epsilon_high: Upper clip (ratio <= 1 + epsilon_high); ``None`` uses ``epsilon``.
        loss_type: ``"dapo"``/``"bnpo"``/``"dr_grpo"`` sum the masked per-token losses,
            ``"grpo"`` sums per-sequence means.
        normalizer: What that sum is divided by. Default: the active tokens (dapo, bnpo),
            the rows (grpo), rows × ``max_completion_length`` (dr_grpo). Pass the whole
            rollout's value when the rollout is split into micro-batches.
        max_completion_length: Needed for ``dr_grpo``'s default normalizer.

    Returns:
        ``(loss, sums)``: the scalar loss and masked *sums* over this batch, for aggregation
        over micro-batches: ``kl`` (the KL term per token, 0 when ``beta == 0``), ``clipped_low``
        (tokens whose ratio fell below ``1 - epsilon`` with a negative advantage),
        ``clipped_high`` (above ``1 + epsilon_high`` with a positive one), ``tokens``; TRL's
        ``clip_ratio/*`` metrics are these over ``tokens``.

    Example:
        >>> lp = torch.zeros(2, 3, requires_grad=True)
        >>> loss, sums = grpo_loss(lp, lp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 3))
        >>> loss.item(), sums["tokens"].item()  # ratio 1: -mean(A) over tokens
        (0.0, 6.0)
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    adv = advantages.unsqueeze(1)  # (N, 1): one advantage for every token of a completion
    ratio = torch.exp(logps - old_logps)
    clipped_ratio = ratio.clamp(1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)  # (N, C)
    kl = torch.zeros_like(per_token)
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("`ref_logps` is required when `beta` != 0")
        diff = ref_logps - logps
        kl = torch.exp(diff) - diff - 1  # k3: unbiased, >= 0
        if use_bias_correction_kl:  # importance-weighted: unbiased reverse-KL gradient
            kl = kl * ratio
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        total = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()
        default = per_token.size(0)
    elif loss_type in ("dapo", "bnpo", "dr_grpo"):
        total = (per_token * mask).sum()
        if loss_type == "dr_grpo":
            if max_completion_length is None and normalizer is None:
                raise ValueError("`max_completion_length` is required for loss_type='dr_grpo'")
            default = per_token.size(0) * (max_completion_length or 1)
        else:
            default = mask.sum().clamp(min=1)
    else:
        raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}")
    loss = total / (default if normalizer is None else normalizer)
    with torch.no_grad():
        # Disjoint (opposite advantage signs): TRL's region clip ratio is their sum.
        low = (ratio < 1 - epsilon) & (adv < 0)
        high = (ratio > 1 + epsilon_high) & (adv > 0)
        sums = {
            "kl": (kl * mask).sum(),
            "clipped_low": (low * mask).sum(),
            "clipped_high": (high * mask).sum(),
            "tokens": mask.sum(),
        }
    return loss, sums


def rollout_loss(
    logps: torch.Tensor,
    rollout: dict[str, torch.Tensor],
    rows: slice,
    cfg: GRPOConfig,
    normalizer: float | torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`grpo_loss` of a micro-batch of a rollout, with ``cfg``'s clip, KL and aggregation.

    Args:
        logps: Policy log-probs of the micro-batch's completion tokens, with grad, ``(n, C)``.
        rollout: The whole rollout's ``advantages`` ``(N,)`` and ``completion_mask``
            ``(N, C)``, with ``old_logps`` when computed (μ > 1; else ``logps.detach()``, as
            TRL) and ``ref_logps`` when ``cfg.beta != 0``.
        rows: The micro-batch's rows.
        cfg: The settings.
        normalizer: The whole rollout's loss denominator.
    """
    old, ref = rollout.get("old_logps"), rollout.get("ref_logps")
    return grpo_loss(
        logps,
        logps.detach() if old is None else old[rows],
        rollout["advantages"][rows],
        rollout["completion_mask"][rows],
        ref_logps=None if ref is None else ref[rows],
        beta=cfg.beta,
        use_bias_correction_kl=cfg.use_bias_correction_kl,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        loss_type=cfg.loss_type,
        normalizer=normalizer,
    )

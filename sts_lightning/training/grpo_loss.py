"""GRPO's math as pure tensor functions, and its settings; mirrors TRL 1.16's ``GRPOTrainer``.

- :func:`combine_rewards`: weighted sum over reward functions, NaN when every one is NaN.
- :func:`grpo_advantages`: group-relative advantages (``scale_rewards``).
- :func:`grpo_loss`: clipped surrogate + k3 KL, aggregated per ``loss_type``.

No Lightning, no I/O: :class:`~sts_lightning.training.grpo.GRPOModule` calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sts_lightning.config import (
    at_least,
    check_fields,
    non_negative_int,
    one_of,
    positive,
    positive_int,
)

__all__ = [
    "GRPOConfig",
    "combine_rewards",
    "grpo_advantages",
    "grpo_loss",
    "nanstd",
    "rollout_loss",
]

ScaleRewards = Literal["group", "batch", "none"] | bool
LossType = Literal["dapo", "bnpo", "grpo", "dr_grpo"]
_SCALE = {True: "group", False: "none", "group": "group", "batch": "batch", "none": "none"}


@dataclass
class GRPOConfig:
    """Sampling and loss settings; names and defaults follow TRL's ``GRPOConfig``."""

    num_generations: int = 8
    """Completions per prompt, G (the group the baseline is taken over); >= 2."""
    max_new_tokens: int = 256
    """Completion budget (TRL: ``max_completion_length``)."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities are scored at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 disables it."""
    top_k: int = 0
    """Top-k sampling; 0 disables it."""
    beta: float = 0.0
    """KL coefficient to the reference; 0 (TRL's default) skips the reference entirely."""
    epsilon: float = 0.2
    """Lower clip: the ratio is clipped below at 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip (1 + epsilon_high); ``None`` uses ``epsilon`` (DAPO suggests 0.28)."""
    num_iterations: int = 1
    """μ: optimizer steps on each rollout (old log-probs computed once per rollout)."""
    scale_rewards: ScaleRewards = "group"
    """Divide advantages by the group's std (``"group"``/``True``), the batch's (``"batch"``)
    or not at all (``"none"``/``False``, Dr. GRPO)."""
    loss_type: LossType = "dapo"
    """Token aggregation: ``"dapo"`` (TRL 1.16 default: sum over all completion tokens of the
    global batch / their number), ``"bnpo"`` (same, local batch), ``"grpo"`` (mean over
    sequences of per-sequence means), ``"dr_grpo"`` (sum / (rows × max_new_tokens))."""
    mask_truncated_completions: bool = False
    """Leave completions without EOS out of the loss (DAPO)."""
    micro_batch_size: int | None = None
    """Rows per forward/backward pass (gradients accumulate over the rollout); ``None``: all."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory (large models)."""
    disable_dropout: bool = False
    """Set every dropout probability to 0 (keeps the ratio at 1 on the first iteration)."""

    def __post_init__(self) -> None:
        check_fields(self, positive_int, "num_generations", "max_new_tokens", "num_iterations")
        at_least("num_generations", self.num_generations, 2)  # the group baseline needs two
        one_of("scale_rewards", self.scale_rewards, _SCALE)
        one_of("loss_type", self.loss_type, ("dapo", "bnpo", "grpo", "dr_grpo"))
        positive("temperature", self.temperature)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}")
        non_negative_int("top_k", self.top_k)
        check_fields(self, at_least, "beta", "epsilon", low=0.0)
        if self.epsilon_high is not None:
            at_least("epsilon_high", self.epsilon_high, 0.0)
        if self.micro_batch_size is not None:
            positive_int("micro_batch_size", self.micro_batch_size)


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
    one_of("scale_rewards", scale_rewards, _SCALE)
    scale = _SCALE[scale_rewards]
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
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: LossType = "dapo",
    normalizer: float | torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of a batch of completions (TRL's ``_compute_loss``, token-level ratios).

    Args:
        logps: Policy log-probs of the completion tokens, with grad, ``(N, C)``.
        old_logps: The same under the policy that sampled them, ``(N, C)``.
        advantages: ``(N,)``.
        mask: 1 on completion tokens, ``(N, C)``.
        ref_logps: Reference log-probs ``(N, C)``, needed when ``beta > 0``.
        beta: KL coefficient.
        epsilon: Lower clip (ratio >= 1 - epsilon).
        epsilon_high: Upper clip (ratio <= 1 + epsilon_high); ``None`` uses ``epsilon``.
        loss_type: ``"dapo"``/``"bnpo"``/``"dr_grpo"`` sum the masked per-token losses,
            ``"grpo"`` sums per-sequence means.
        normalizer: What that sum is divided by. Default: the active tokens (dapo, bnpo),
            the rows (grpo), rows × ``max_new_tokens`` (dr_grpo). Pass the whole rollout's
            value when the rollout is split into micro-batches.
        max_new_tokens: Needed for ``dr_grpo``'s default normalizer.

    Returns:
        ``(loss, sums)``: the scalar loss and masked *sums* over this batch, for aggregation
        over micro-batches: ``kl`` (k3 KL per token, 0 when ``beta == 0``), ``clipped``
        (tokens whose ratio left the clip region in the direction the advantage pushes),
        ``tokens``.

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
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        total = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum()
        default = per_token.size(0)
    elif loss_type in ("dapo", "bnpo", "dr_grpo"):
        total = (per_token * mask).sum()
        if loss_type == "dr_grpo":
            if max_new_tokens is None and normalizer is None:
                raise ValueError("`max_new_tokens` is required for loss_type='dr_grpo'")
            default = per_token.size(0) * (max_new_tokens or 1)
        else:
            default = mask.sum().clamp(min=1)
    else:
        raise ValueError(
            f"`loss_type` must be 'dapo', 'bnpo', 'grpo' or 'dr_grpo', got {loss_type!r}"
        )
    loss = total / (default if normalizer is None else normalizer)
    with torch.no_grad():
        out_of_region = ((ratio < 1 - epsilon) & (adv < 0)) | (
            (ratio > 1 + epsilon_high) & (adv > 0)
        )
        sums = {
            "kl": (kl * mask).sum(),
            "clipped": (out_of_region * mask).sum(),
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
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        loss_type=cfg.loss_type,
        normalizer=normalizer,
    )

"""GRPO's math (grpo_config.py, grpo_loss.py, grpo_metrics.py) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from sts_lightning.training.grpo_loss import (
    GRPOConfig,
    combine_rewards,
    grpo_advantages,
    grpo_loss,
    rollout_loss,
)
from sts_lightning.training.grpo_metrics import (
    completion_metrics,
    reward_metrics,
    update_metrics,
    validation_metrics,
    validation_sums,
)


def test_advantages_match_a_hand_computation():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    # Group 1: mean 0.25, Bessel std 0.5. Group 2: mean 2, std sqrt(2/3).
    hand = [0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001]
    std2 = math.sqrt(2 / 3) + 1e-4
    hand += [1 / std2, -1 / std2, 0.0, 0.0]
    assert grpo_advantages(rewards, 4).tolist() == pytest.approx(hand, rel=1e-6)
    assert grpo_advantages(rewards, 4, scale_rewards=False).tolist() == pytest.approx(
        [0.75, -0.25, -0.25, -0.25, 1.0, -1.0, 0.0, 0.0]
    )
    batch_std = torch.std(rewards).item() + 1e-4  # "batch": one std over all rewards
    assert grpo_advantages(rewards, 4, scale_rewards="batch")[0].item() == pytest.approx(
        0.75 / batch_std
    )


def test_unscorable_completions_leave_the_baseline_and_get_zero_advantage():
    nan = float("nan")
    per_func = torch.tensor([[1.0, nan], [nan, nan], [0.0, 1.0], [0.0, nan]])
    rewards = combine_rewards(per_func, torch.tensor([1.0, 0.5]))
    assert rewards[1].isnan() and rewards[[0, 2, 3]].tolist() == [1.0, 0.5, 0.0]
    adv = grpo_advantages(rewards, 4, scale_rewards=False)
    assert adv.tolist() == pytest.approx([0.5, 0.0, 0.0, -0.5])  # mean of (1, 0.5, 0) = 0.5


def test_num_generations_below_two_is_an_error():
    with pytest.raises(ValueError, match="`num_generations` must be >= 2"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="`num_generations` must be >= 2"):
        grpo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="`scale_rewards`"):
        GRPOConfig(scale_rewards="per-token")


def test_loss_is_the_clipped_surrogate_with_k3_kl():
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    old = torch.zeros(2, 3)
    logps = torch.log(torch.tensor([[1.5, 1.1, 9.0], [0.5, 1.0, 1.0]])).requires_grad_()
    ref = torch.zeros(2, 3)
    loss, sums = grpo_loss(logps, old, adv, mask, ref_logps=ref, beta=0.1)
    # Ratios (1.5, 1.1 | 0.5); A = +1 clips 1.5 to 1.2, A = -1 clips 0.5 to 0.8: per token
    # -min(rA, clip(r)A) = (-1.2, -1.1 | 0.8); k3(ref=0) = 1/r - log(1/r) - 1 per token.
    # TRL 1.16's default bias correction weights each token's KL by its ratio.
    k3 = [1 / r + math.log(r) - 1 for r in (1.5, 1.1, 0.5)]
    weighted = [k * r for k, r in zip(k3, (1.5, 1.1, 0.5), strict=True)]
    hand = (-1.2 - 1.1 + 0.8 + 0.1 * sum(weighted)) / 3  # dapo: / active tokens
    assert loss.item() == pytest.approx(hand, rel=1e-5)
    plain, plain_sums = grpo_loss(
        logps, old, adv, mask, ref_logps=ref, beta=0.1, use_bias_correction_kl=False
    )
    assert plain.item() == pytest.approx((-1.2 - 1.1 + 0.8 + 0.1 * sum(k3)) / 3, rel=1e-5)
    assert plain_sums["kl"].item() == pytest.approx(sum(k3), rel=1e-5)
    # Token 1.5 (A > 0) is above 1.2, token 0.5 (A < 0) below 0.8; 1.1 is inside.
    assert sums["clipped_high"].item() == 1 and sums["clipped_low"].item() == 1
    assert sums["tokens"].item() == 3
    assert sums["kl"].item() == pytest.approx(sum(weighted), rel=1e-5)
    loss.backward()
    # Clipped tokens carry only the KL gradient; the padding token none at all.
    assert logps.grad[0, 2] == 0
    grpo_only, _ = grpo_loss(logps, old, adv, mask, loss_type="grpo")
    assert grpo_only.item() == pytest.approx(((-1.2 - 1.1) / 2 + 0.8) / 2, rel=1e-5)


def test_rollout_loss_is_grpo_loss_on_the_micro_batch():
    gen = torch.Generator().manual_seed(0)
    logps = -torch.rand(4, 3, generator=gen)
    rollout = {
        "advantages": torch.tensor([1.0, -1.0, 0.5, 0.0]),
        "completion_mask": torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]]),
        "old_logps": logps - 0.3,
        "ref_logps": logps + 0.1,
    }
    cfg = GRPOConfig(beta=0.04, epsilon_high=0.28)
    rows = slice(1, 3)
    loss, sums = rollout_loss(logps[rows], rollout, rows, cfg, normalizer=7.0)
    want, want_sums = grpo_loss(
        logps[rows], rollout["old_logps"][rows], rollout["advantages"][rows],
        rollout["completion_mask"][rows], ref_logps=rollout["ref_logps"][rows], beta=0.04,
        epsilon_high=0.28, normalizer=7.0,
    )  # fmt: skip
    assert loss.item() == want.item() and sums == want_sums
    del rollout["old_logps"]  # μ = 1: the old log-probs are the current ones, detached
    loss, _ = rollout_loss(logps[rows], rollout, rows, cfg, normalizer=7.0)
    k3 = math.exp(0.1) - 1.1  # per token: the reference is 0.1 above the policy
    # Ratio 1: per token -A + β k3; row 1 (A = -1) has 1 token, row 2 (A = 0.5) has 3.
    assert loss.item() == pytest.approx((1.0 - 1.5 + 0.04 * 4 * k3) / 7.0, rel=1e-4)


def test_config_names_and_defaults_are_trls():
    from trl import GRPOConfig as TRLConfig

    ours, trl = GRPOConfig(), TRLConfig(output_dir="unused", report_to=[], use_cpu=True)
    own = {"micro_batch_size", "gradient_checkpointing"}  # documented as kept different
    for field in set(vars(ours)) - own:
        assert hasattr(trl, field), field
        assert getattr(ours, field) == getattr(trl, field), field
    assert GRPOConfig(scale_rewards=False).scale_rewards == "none"  # as TRL maps it
    with pytest.raises(ValueError, match="`reward_weights`"):
        GRPOConfig(reward_weights=[1.0, float("nan")])


def test_logged_metrics_average_as_documented():
    sums = {"loss": 1.0, "kl": 4.0, "entropy": 6.0, "clipped_low": 1.0, "clipped_high": 2.0}
    metrics = update_metrics({**sums, "tokens": 8.0}, kl=True)
    assert metrics["loss"] == 1.0 and metrics["kl"] == 0.5 and metrics["entropy"] == 0.75
    assert metrics["clip_ratio/low_mean"] == 0.125 and metrics["clip_ratio/high_mean"] == 0.25
    assert metrics["clip_ratio/region_mean"] == 0.375
    assert "kl" not in update_metrics({**sums, "tokens": 8.0}, kl=False)
    lengths, cut = torch.tensor([3.0, 5.0, 8.0, 8.0]), torch.tensor([False, False, True, True])
    m = completion_metrics(lengths, cut)
    assert m["completions/mean_length"].item() == 6.0 and m["completions/min_length"] == 3.0
    assert m["completions/clipped_ratio"].item() == 0.5
    assert m["completions/mean_terminated_length"].item() == 4.0
    assert m["completions/max_terminated_length"].item() == 5.0
    assert (
        completion_metrics(lengths, torch.ones(4, dtype=torch.bool))[
            "completions/mean_terminated_length"
        ].item()
        == 0.0
    )  # none terminated: TRL logs 0


def test_reward_metrics_match_trls_definitions():
    nan = float("nan")
    per_func = torch.tensor(
        [[1.0, 0.0], [1.0, 1.0], [0.0, nan], [1.0, nan], [nan, nan], [2.0, 0.0]]
    )
    rewards = combine_rewards(per_func, torch.tensor([1.0, 2.0]))  # [1, 3, 0, 1, nan, 2]
    m = reward_metrics(rewards, per_func, ["a", "b"], 2)
    assert m["rewards/b/mean"].item() == pytest.approx(1 / 3)  # None left out
    assert m["rewards/b/std"].item() == pytest.approx(math.sqrt(1 / 3))
    assert m["reward"].item() == pytest.approx(7 / 5)
    # Group stds: (1, 3) → 1.41, (0, 1) → 0.71, (nan, 2) → NaN (one score), not counted as 0.
    assert m["frac_reward_zero_std"].item() == 0.0
    same = reward_metrics(torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.ones(4, 1), ["a"], 2)
    assert same["frac_reward_zero_std"].item() == 0.5
    batch = reward_metrics(torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.ones(4, 1), ["a"], 2, "batch")
    assert batch["frac_reward_zero_std"].item() == 0.0  # "batch": the batch's std, not 0


def test_validation_metrics_pool_batches_and_loaders():
    # Loader a: two batches (rewards 1, 0 | 1); loader b: nothing scorable (NaN).
    nan = float("nan")
    a1 = validation_sums(
        torch.tensor([1.0, 0.0]), torch.tensor([[1.0], [0.0]]), torch.tensor([2.0, 4.0]),
        torch.tensor([False, True]),
    )  # fmt: skip
    a2 = validation_sums(torch.ones(1), torch.ones(1, 1), torch.tensor([6.0]), torch.zeros(1))
    b = validation_sums(
        torch.full((1,), nan), torch.full((1, 1), nan), torch.ones(1), torch.zeros(1)
    )
    means = validation_metrics(["a", "b"], torch.stack([a1 + a2, b]), ["f"])
    assert means["val/reward/a"].item() == pytest.approx(2 / 3) and means["val/reward/b"].isnan()
    assert means["val/reward"].item() == pytest.approx(2 / 3)
    assert means["val/reward_std"].item() == pytest.approx(torch.tensor([1.0, 0, 1]).std().item())
    assert means["val/rewards/f/mean"].item() == pytest.approx(2 / 3)
    assert means["val/completions/mean_length"].item() == pytest.approx(13 / 4)
    assert means["val/completions/clipped_ratio"].item() == pytest.approx(1 / 4)

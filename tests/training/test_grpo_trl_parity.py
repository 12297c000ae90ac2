"""GRPO's advantages, loss, gradients and metrics equal TRL 1.16's, computed by TRL's own code.

The oracle is a real ``trl.GRPOTrainer`` on a tiny random model: its
``_generate_and_score_completions`` samples, calls preset reward functions and computes the
advantages and reward/length metrics; its ``_compute_loss`` computes the loss (and the
KL/entropy/clip metrics) of that batch. Ours run on the same rewards, log-probabilities and
masks: :func:`grpo_advantages`, :func:`rollout_loss` over micro-batches with the GRPO module's
normalizer, and :mod:`~sts_lightning.training.grpo_metrics`.
"""

from __future__ import annotations

import math

import pytest
import torch

from sts_lightning.training.grpo import GRPOConfig, GRPOModule
from sts_lightning.training.grpo_loss import combine_rewards, grpo_advantages, rollout_loss
from sts_lightning.training.grpo_metrics import completion_metrics, reward_metrics, update_metrics
from sts_lightning.training.logps import completion_logps

G, C = 4, 6  # completions per prompt, completion budget
PROMPTS = ["What is 1 + 1?", "What is 12 + 7?", "Solve 3 * 4 - 5."]
# Three groups: with a None; without spread; a row both functions skip (unscorable).
FIRST = [1.0, 0.0, None, 2.0, 0.5, 0.5, 0.5, 0.5, 3.0, None, 0.0, -1.0]
SECOND = [0.0, 1.0, 1.0, None, 1.0, 1.0, 1.0, 1.0, None, None, 2.0, 0.0]
WEIGHTS = [1.0, 0.5]


def first(completions, **kwargs):
    return FIRST[: len(completions)]


def second(completions, **kwargs):
    return SECOND[: len(completions)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_llama, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    tiny_llama.save_pretrained(path)  # by path: TRL loads its reference model from there
    tiny_tokenizer.save_pretrained(path)
    return path


def trl_batch(model_dir, tiny_tokenizer, tmp_path, **settings):
    """A TRL trainer and the output of its own rollout-and-score step on ``PROMPTS``."""
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    args = TRLConfig(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, num_generations=G,
        per_device_train_batch_size=G * len(PROMPTS), max_completion_length=C,
        gradient_checkpointing=False, reward_weights=WEIGHTS, **settings,
    )  # fmt: skip
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS])
    trainer = GRPOTrainer(
        model=str(model_dir), reward_funcs=[first, second], args=args,
        train_dataset=dataset, processing_class=tiny_tokenizer,
    )  # fmt: skip
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(
        [{"prompt": p} for p in PROMPTS for _ in range(G)]
    )
    return trainer, out


def _nan(values):
    return torch.tensor([math.nan if v is None else v for v in values])


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_advantages_and_rollout_metrics_equal_trls(
    model_dir, tiny_tokenizer, tmp_path, scale_rewards
):
    trainer, out = trl_batch(model_dir, tiny_tokenizer, tmp_path, scale_rewards=scale_rewards)
    per_func = torch.stack([_nan(FIRST), _nan(SECOND)], 1)  # (N, F)
    rewards = combine_rewards(per_func, torch.tensor(WEIGHTS))
    ours = grpo_advantages(rewards, G, scale_rewards)
    torch.testing.assert_close(ours, out["advantages"], rtol=1e-5, atol=1e-6)
    # The logged statistics under TRL's names, with TRL's values.
    theirs = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    mine = reward_metrics(rewards, per_func, ["first", "second"], G, scale_rewards)
    mask, ids = out["completion_mask"], out["completion_ids"]
    stops = torch.tensor([tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id])
    last = ids.gather(1, (mask.sum(1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
    mine |= completion_metrics(mask.sum(1).float(), ~torch.isin(last, stops))
    assert set(mine) <= set(theirs)
    for key, value in mine.items():
        assert value.item() == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key


LOSS_CASES = [
    ("dapo", 0.0, None), ("dapo", 0.04, 0.28), ("bnpo", 0.04, 0.28),
    ("grpo", 0.04, 0.28), ("dr_grpo", 0.04, None),
]  # fmt: skip


@pytest.mark.parametrize(("loss_type", "beta", "epsilon_high"), LOSS_CASES)
def test_loss_gradients_and_update_metrics_equal_trls(
    model_dir, tiny_tokenizer, tmp_path, loss_type, beta, epsilon_high
):
    settings = dict(loss_type=loss_type, beta=beta, epsilon_high=epsilon_high)
    trainer, out = trl_batch(model_dir, tiny_tokenizer, tmp_path, **settings)
    model, mask = trainer.model, out["completion_mask"]
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attention = torch.cat([out["prompt_mask"], mask], 1)
    # Old (and reference) log-probs off the current ones, so ratios leave the clip region.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        current = completion_logps(model, ids, attention, C)
    out["old_per_token_logps"] = current + 0.3 * torch.randn(current.shape, generator=gen)
    if beta:
        out["ref_per_token_logps"] = current + 0.2 * torch.randn(current.shape, generator=gen)
    trainer.current_gradient_accumulation_steps = 1  # as HF's loop sets it, no accumulation
    trainer._metrics["train"].clear()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = trainer._compute_loss(model, out)
    want = torch.autograd.grad(loss, params)

    # Ours: the GRPO module's normalizer and two micro-batches of rollout_loss.
    cfg = GRPOConfig(num_generations=G, max_completion_length=C, **settings)
    module = GRPOModule(model, tiny_tokenizer, grpo=cfg)
    rollout = {"advantages": out["advantages"], "completion_mask": mask}
    rollout["old_logps"] = out["old_per_token_logps"]
    rollout["ref_logps"] = out.get("ref_per_token_logps")
    normalizer, total, sums = module._normalizer(mask), 0.0, {}
    for rows in (slice(0, 5), slice(5, None)):
        logps, entropy = completion_logps(model, ids[rows], attention[rows], C, with_entropy=True)
        part, part_sums = rollout_loss(logps, rollout, rows, cfg, normalizer)
        part_sums["entropy"] = (entropy * mask[rows]).sum()
        total = total + part
        sums = {k: sums.get(k, 0.0) + v.item() for k, v in part_sums.items()}
    assert total.item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    for got, exp in zip(torch.autograd.grad(total, params), want, strict=True):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-7)
    theirs = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    mine = update_metrics({"loss": total.item(), **sums}, kl=beta != 0.0)
    del mine["loss"]  # TRL's "loss" is the Trainer's, not one of its _metrics
    assert ("kl" in theirs) == ("kl" in mine) and set(mine) <= set(theirs)
    for key, value in mine.items():
        assert value == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key
    assert theirs["clip_ratio/region_mean"] > 0  # the check compares clipping, not zeros

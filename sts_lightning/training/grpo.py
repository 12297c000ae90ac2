"""Group Relative Policy Optimization (GRPO) as a LightningModule, with TRL 1.16's semantics.

One training step on a batch of ``B`` prompts:

1. **Rollout** (no grad, :mod:`sts_lightning.training.rollout`): ``G = num_generations`` sampled
   completions per prompt, seeded by ``(seed, global_step, rank)``, so a resumed run samples
   what an uninterrupted one does; every reward function scores them (TRL signature).
2. **Advantages** (:func:`grpo_advantages`): weighted reward minus its group's mean, over the
   group's std (``scale_rewards``). Rewards are gathered over DDP ranks first (a group never
   straddles ranks; the gather serves ``"batch"`` scaling and the logged statistics).
3. **Update** (:func:`grpo_loss`): ``μ = num_iterations`` optimizer steps on the rollout, each
   on the clipped surrogate plus ``β`` × k3 KL to the reference, aggregated as TRL's default
   ``loss_type="dapo"``. Old log-probs are computed once per rollout without grad (for μ = 1
   they equal the current ones: ``logps.detach()``, as TRL).

The reference: with LoRA, the model with its adapter off (``disable_adapter()``); without LoRA
and with ``beta > 0``, a frozen copy made at init, kept off the module tree (not checkpointed:
rebuilt from ``model``). Optimisation is manual, so ``Trainer(max_steps=...)`` counts optimizer
steps (μ per batch, as TRL's ``global_step``) and ``max_grad_norm`` replaces the Trainer's
``gradient_clip_val``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from sts_lightning.model.loading import DEFAULT_MODEL, load_model_and_tokenizer
from sts_lightning.training.grpo_loss import (
    GRPOConfig,
    combine_rewards,
    grpo_advantages,
    grpo_loss,
    nanstd,
)
from sts_lightning.training.rewards import (
    RewardFunc,
    resolve_reward,
    reward_name,
    score_completions,
)
from sts_lightning.training.rollout import (
    completion_logps,
    encode_prompts,
    eos_token_ids,
    sample_completions,
    seeded_sampling,
    split_batch,
)
from sts_lightning.training.sft import LoraSettings

__all__ = ["GRPOConfig", "GRPOModule", "LoraSettings", "grpo_advantages", "grpo_loss"]

log = logging.getLogger(__name__)


class GRPOModule(LightningModule):
    """Fine-tune a causal LM with GRPO from batches of prompts and reward functions.

    Batches are dicts of lists with a ``"prompt"`` key (the user turn) and any other columns,
    which reach the reward functions by name
    (:class:`~sts_lightning.training.data.PromptDataModule`).

    Args:
        model: A checkpoint (``"embedded:smollm2"``, a directory, a hub id) or a loaded HF
            causal LM, which is then trained in place.
        tokenizer: Its tokenizer (or a path); required when ``model`` is an object.
        reward_funcs: TRL-signature reward functions, or dotted paths to them.
        reward_weights: One weight per function (default 1.0 each).
        grpo: Sampling and loss settings (:class:`GRPOConfig`, or a dict of its fields).
        lora: Train a LoRA adapter instead of every weight (:class:`LoraSettings` or a dict).
        lr: AdamW learning rate (TRL's default 1e-6).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up, in optimizer steps.
        lr_schedule: ``"linear"`` decay to 0 at the last step (TRL's default) or ``"constant"``.
        max_grad_norm: Gradient-norm clip of every optimizer step; ``None`` disables it.
        system_prompt: An explicit system turn; ``None`` keeps the chat template's default.
        dtype: Weight dtype when ``model`` is loaded by name.
        seed: Seeds generation, with the step and the rank.
    """

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        tokenizer: Any = None,
        reward_funcs: Sequence[str | RewardFunc] = (
            "sts_lightning.training.rewards.accuracy_reward",
        ),
        reward_weights: Sequence[float] | None = None,
        grpo: GRPOConfig | None = None,
        lora: LoraSettings | None = None,
        lr: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: str = "linear",
        max_grad_norm: float | None = 1.0,
        system_prompt: str | None = None,
        dtype: str = "float32",
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Dicts too: checkpoints store these as dicts, so `torch.load(weights_only=True)` works.
        grpo = GRPOConfig(**grpo) if isinstance(grpo, dict) else grpo or GRPOConfig()
        lora = LoraSettings(**lora) if isinstance(lora, dict) else lora
        self.grpo = grpo
        self.reward_funcs = [resolve_reward(f) for f in reward_funcs]
        weights = [1.0] * len(self.reward_funcs) if reward_weights is None else reward_weights
        if not self.reward_funcs or len(weights) != len(self.reward_funcs):
            raise ValueError(
                f"`reward_weights` must have one weight per reward function "
                f"({len(self.reward_funcs)}, at least one), got {len(weights)}"
            )
        if lr_schedule not in ("linear", "constant"):
            raise ValueError(f"`lr_schedule` must be 'linear' or 'constant', got {lr_schedule!r}")
        if not lr > 0 or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"`lr` must be > 0 and `warmup_steps` >= 0, got {lr}, {warmup_steps}")
        # Objects (a loaded model, local functions) are not hyperparameters a YAML can restate.
        objects = {"model": model, "tokenizer": tokenizer, "reward_funcs": None}
        objects["reward_funcs"] = [f for f in reward_funcs if not isinstance(f, str)] or None
        self.save_hyperparameters(
            ignore=[k for k, v in objects.items() if v is not None and not isinstance(v, str)]
        )
        self.hparams.update(grpo=asdict(grpo), lora=None if lora is None else asdict(lora))
        self.automatic_optimization = False  # μ optimizer steps per rollout

        if isinstance(model, (str, Path)):
            model, loaded = load_model_and_tokenizer(model, dtype=dtype)
            tokenizer = loaded if tokenizer is None else tokenizer
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if tokenizer is None:
            raise ValueError("`tokenizer` is required when `model` is a model object")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        for layer in model.modules() if grpo.disable_dropout else ():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = 0.0
        ref = None
        if grpo.beta != 0.0 and lora is None:
            ref = copy.deepcopy(model).eval().requires_grad_(False)
        if grpo.gradient_checkpointing:
            # Non-reentrant: works with frozen inputs (LoRA) without enable_input_require_grads.
            model.gradient_checkpointing_enable({"use_reentrant": False})
        if lora is not None:
            from peft import get_peft_model  # lazy: ~5 s of imports

            model = get_peft_model(model, lora.to_peft())
            self.strict_loading = False  # checkpoints hold the adapter only (on_save_checkpoint)
        self.model = model.train()
        self.tokenizer = tokenizer
        self.reward_names = [reward_name(f) for f in self.reward_funcs]
        self.register_buffer("reward_weights", torch.tensor(weights), persistent=False)
        self._eos_ids = eos_token_ids(model, tokenizer)
        self._val_sums: dict[str, torch.Tensor] = {}
        object.__setattr__(self, "_ref_model", ref)  # not a submodule: see the module docstring

    # ----------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def _rollout(self, batch: Any, *, train: bool = True) -> dict[str, torch.Tensor]:
        """Sample (greedy, 1 per prompt, when not ``train``) and score completions."""
        prompts, columns = split_batch(batch)
        g, cfg = (self.grpo.num_generations if train else 1), self.grpo
        ids, mask = encode_prompts(
            self.tokenizer, prompts, system_prompt=self.hparams.system_prompt
        )
        ids = ids.repeat_interleave(g, 0).to(self.device)  # (B * G, P), groups contiguous
        mask = mask.repeat_interleave(g, 0).to(self.device)
        seed = (self.hparams.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank
        # Eval mode while sampling: with gradient checkpointing, train mode disables the KV cache.
        training = self.model.training
        self.model.eval()
        try:
            with seeded_sampling(seed, self.device) if train else nullcontext():
                completion_ids, completion_mask = sample_completions(
                    self.model, self.tokenizer, ids, mask, max_new_tokens=cfg.max_new_tokens,
                    do_sample=train, temperature=cfg.temperature, top_p=cfg.top_p,
                    top_k=cfg.top_k,
                )  # fmt: skip
        finally:
            self.model.train(training)
        kept = [c[m.bool()].tolist() for c, m in zip(completion_ids, completion_mask, strict=True)]
        rewards_per_func = score_completions(
            self.reward_funcs,
            [p for p in prompts for _ in range(g)],
            self.tokenizer.batch_decode(kept, skip_special_tokens=True),
            kept,
            {key: [v for v in values for _ in range(g)] for key, values in columns.items()},
        )
        if train and cfg.mask_truncated_completions:
            # Kept: ended before the budget (mask has a 0) or on an EOS as its last token.
            eos = torch.tensor(self._eos_ids, device=self.device)
            ended = (completion_mask[:, -1] == 0) | torch.isin(completion_ids[:, -1], eos)
            completion_mask = completion_mask * ended[:, None]
        return {
            "input_ids": torch.cat([ids, completion_ids], 1),  # (B * G, P + C)
            "attention_mask": torch.cat([mask, completion_mask], 1),
            "completion_mask": completion_mask,  # (B * G, C)
            "rewards_per_func": rewards_per_func.to(self.device),  # (B * G, F), NaN = None
            "length": torch.tensor([float(len(k)) for k in kept], device=self.device),
        }

    def _logps(self, model, rollout: dict[str, torch.Tensor], rows=slice(None)) -> torch.Tensor:
        return completion_logps(
            model,
            rollout["input_ids"][rows],
            rollout["attention_mask"][rows],
            rollout["completion_mask"].size(1),
            temperature=self.grpo.temperature,
            batch_size=self.grpo.micro_batch_size,
        )

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self._trainer is None or self.trainer.world_size == 1:
            return x
        return self.all_gather(x).flatten(0, 1)  # (world, N, ...) → (world * N, ...)

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One rollout, then ``num_iterations`` optimizer steps on it."""
        cfg = self.grpo
        rollout = self._rollout(batch)
        n = rollout["completion_mask"].size(0)
        rewards_per_func = self._gather(rollout["rewards_per_func"])  # (world * B * G, F)
        rewards = combine_rewards(rewards_per_func, self.reward_weights)
        advantages = grpo_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        rank = self.global_rank if advantages.numel() > n else 0
        rollout["advantages"] = advantages[rank * n : (rank + 1) * n]
        with torch.no_grad():
            if cfg.num_iterations > 1:
                rollout["old_logps"] = self._logps(self.model, rollout)
            if cfg.beta != 0.0:
                ref = self._ref_model  # None with LoRA: the policy with its adapter off
                if ref is not None:  # follows the policy's device and (precision plugin) dtype
                    ref.to(device=self.device, dtype=next(self.model.parameters()).dtype)
                with self.model.disable_adapter() if ref is None else nullcontext():
                    rollout["ref_logps"] = self._logps(self.model if ref is None else ref, rollout)
        sums = [self._optimizer_step(rollout) for _ in range(cfg.num_iterations)]
        self._log_step(rollout, rewards, rewards_per_func, sums)

    def _normalizer(self, mask: torch.Tensor) -> torch.Tensor | int:
        """The whole rollout's loss denominator (every micro-batch divides by it)."""
        if self.grpo.loss_type == "dapo":
            # Global token count / world size: DDP's gradient mean then equals the gradient of
            # (sum over every rank's tokens) / (their count), as TRL's num_items_in_batch.
            world = self.trainer.world_size if self._trainer is not None else 1
            return self._gather(mask.sum().float().reshape(1)).sum().clamp(min=1) / world
        if self.grpo.loss_type == "bnpo":
            return mask.sum().clamp(min=1)
        return mask.size(0) * (self.grpo.max_new_tokens if self.grpo.loss_type == "dr_grpo" else 1)

    def _optimizer_step(self, rollout: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, opt = self.grpo, self.optimizers()
        mask, n = rollout["completion_mask"], rollout["completion_mask"].size(0)
        normalizer, step = self._normalizer(mask), cfg.micro_batch_size or n
        totals = dict.fromkeys(("loss", "kl", "clipped", "tokens"), 0.0)
        opt.zero_grad()
        for start in range(0, n, step):
            rows = slice(start, start + step)
            logps = self._logps(self.model, rollout, rows)
            old = rollout.get("old_logps")
            loss, sums = grpo_loss(
                logps,
                logps.detach() if old is None else old[rows],
                rollout["advantages"][rows],
                mask[rows],
                ref_logps=rollout["ref_logps"][rows] if "ref_logps" in rollout else None,
                beta=cfg.beta,
                epsilon=cfg.epsilon,
                epsilon_high=cfg.epsilon_high,
                loss_type=cfg.loss_type,
                normalizer=normalizer,
            )
            self.manual_backward(loss)
            for key, value in (("loss", loss), *sums.items()):
                totals[key] += value.item()
        if self.hparams.max_grad_norm is not None:
            self.clip_gradients(opt, self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.lr_schedulers().step()
        return totals

    def _log_step(self, rollout, rewards, rewards_per_func, sums: list[dict[str, float]]) -> None:
        g = self.grpo.num_generations
        batch_size = rollout["completion_mask"].size(0) // g
        zero_std = nanstd(rewards.view(-1, g), dim=1).nan_to_num(0.0) < 1e-8
        # Reward statistics are over the gathered (global) rollout already.
        stats = {
            "grpo/reward_mean": torch.nanmean(rewards),
            "grpo/reward_std": nanstd(rewards),
            "grpo/frac_reward_zero_std": zero_std.float().mean(),
        }
        for j, name in enumerate(self.reward_names):
            stats[f"grpo/rewards/{name}"] = torch.nanmean(rewards_per_func[:, j])
        self.log_dict(stats, on_step=True, on_epoch=False, batch_size=batch_size)
        tokens = max(sum(s["tokens"] for s in sums), 1.0)
        local = {
            "train/loss": sum(s["loss"] for s in sums) / len(sums),
            "grpo/completion_length": rollout["length"].mean(),
            "grpo/clip_ratio": sum(s["clipped"] for s in sums) / tokens,
            "lr": self.optimizers().param_groups[0]["lr"],
        }
        if self.grpo.beta != 0.0:
            local["grpo/kl"] = sum(s["kl"] for s in sums) / tokens
        self.log_dict(local, on_step=True, on_epoch=False, sync_dist=True, batch_size=batch_size)

    # ----------------------------------------------------------------------------- validation
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Scores one greedy completion per prompt; sums per loader (its ``"name"``)."""
        rollout = self._rollout(batch, train=False)
        per_func = rollout["rewards_per_func"]
        rewards = combine_rewards(per_func, self.reward_weights)
        name = batch.get("name") if isinstance(batch, dict) else None
        name = name if isinstance(name, str) else str(dataloader_idx)
        values = torch.cat([rewards[:, None], per_func], 1).double()  # (B, 1 + F)
        sums = torch.stack([values.nansum(0), (~values.isnan()).sum(0).double()])  # (2, 1 + F)
        self._val_sums[name] = self._val_sums.get(name, 0) + sums

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        names = list(self._val_sums)  # loaders run in the same order on every rank
        sums = self.trainer.strategy.reduce(
            torch.stack([self._val_sums[k] for k in names]), reduce_op="sum"
        )  # (loaders, 2, 1 + F)
        means = sums[:, 0] / sums[:, 1]  # NaN where nothing was scorable
        metrics = {f"val/reward/{name}": means[i, 0] for i, name in enumerate(names)}
        metrics["val/reward"] = means[:, 0].nanmean()  # unweighted over loaders, as SFT's val/loss
        pooled = sums.sum(0)
        for j, name in enumerate(self.reward_names, start=1):
            metrics[f"val/rewards/{name}"] = pooled[0, j] / pooled[1, j]
        # Equal on every rank already; sync_dist only keeps Lightning's distributed check quiet.
        metrics = {k: v.float() for k, v in metrics.items()}
        self.log_dict(metrics, add_dataloader_idx=False, sync_dist=True)
        self._val_sums = {}

    # ----------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = None
        if self._trainer is not None and self.trainer.max_steps > 0:
            total = self.trainer.max_steps
        elif self._trainer is not None and math.isfinite(self.trainer.estimated_stepping_batches):
            total = int(self.trainer.estimated_stepping_batches) * self.grpo.num_iterations

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / (hp.warmup_steps + 1)
            if hp.lr_schedule == "constant" or total is None:
                return 1.0
            return max(0.0, (total - step) / max(1, total - hp.warmup_steps))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.lora is None:
            return
        # Only the adapter: the frozen base (15 GB for a 7B model) is reloaded from `model`.
        keep = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.hparams.lora is None:
            return
        # strict_loading is off for LoRA: check the adapter weights by hand.
        keep = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        missing, unexpected = keep - set(checkpoint["state_dict"]), set(checkpoint["state_dict"])
        if missing or unexpected - keep:
            raise RuntimeError(
                f"the checkpoint does not match this module's LoRA adapter: missing "
                f"{sorted(missing)[:5]}, unexpected {sorted(unexpected - keep)[:5]} "
                "(check `lora` and `model` against the run that wrote it)"
            )

    def save_hf(self, path: str | Path) -> Path:
        """Write the model (or the LoRA adapter alone) and tokenizer with ``save_pretrained``.

        Under a trainer every rank calls it and rank 0 writes. Reload with ``from_pretrained``
        (``PeftModel.from_pretrained`` on the base model for an adapter).
        """
        path = Path(path)
        if self._trainer is None or self.trainer.is_global_zero:
            self.model.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
            log.info("saved the HF %s to %s", "adapter" if self.hparams.lora else "model", path)
        if self._trainer is not None:
            self.trainer.strategy.barrier("sts_grpo_save_hf")
        return path

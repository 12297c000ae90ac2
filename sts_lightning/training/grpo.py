"""Group Relative Policy Optimization (GRPO) as a LightningModule, with TRL 1.16's semantics.

One training step on a batch of ``B`` prompts:

1. **Rollout** (no grad, :mod:`sts_lightning.training.rollout`): ``G = num_generations`` sampled
   completions per prompt, seeded by ``(seed, global_step, rank)``, so a resumed run samples
   what an uninterrupted one does; every reward function scores them, called with TRL's
   keywords (:mod:`~sts_lightning.training.reward_calls`; message-list prompts included).
2. **Advantages** (:func:`grpo_advantages`): weighted reward minus its group's mean, over the
   group's std (``scale_rewards``). Rewards are gathered over DDP ranks first (a group never
   straddles ranks; the gather serves ``"batch"`` scaling and the logged statistics).
3. **Update** (:func:`grpo_loss`): ``μ = num_iterations`` optimizer steps on the rollout, each
   on the clipped surrogate plus ``β`` × k3 KL to the reference, aggregated as TRL's default
   ``loss_type="dapo"``. Old log-probs are computed once per rollout without grad (for μ = 1
   they equal the current ones: ``logps.detach()``, as TRL).

The reference: with LoRA, the model with its adapter off (``disable_adapter()``); without LoRA
and with ``beta > 0``, a frozen copy of the initial model (:attr:`GRPOModule.ref_model`), off the
module tree (not checkpointed: rebuilt from the base model). The model loads lazily, in
``configure_model``, as :class:`~sts_lightning.training.sft.SFTModule`'s. Optimisation is manual,
so ``Trainer(max_steps=...)`` counts optimizer steps (μ per batch, as TRL's ``global_step``) and
``max_grad_norm`` replaces the Trainer's ``gradient_clip_val``.

Logged (:mod:`~sts_lightning.training.grpo_logging`): TRL's metric names under ``train/``
(``train/reward``, ``train/rewards/<func>/mean``, ``train/kl``, …) and ``val/``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from sts_lightning.config import positive
from sts_lightning.model.loading import (
    DEFAULT_MODEL,
    check_model_init_kwargs,
    load_model_and_tokenizer,
)
from sts_lightning.training import base, grpo_logging, optim
from sts_lightning.training import grpo_metrics as metrics
from sts_lightning.training.grpo_loss import (
    GRPOConfig,
    combine_rewards,
    grpo_advantages,
    grpo_loss,
    rollout_loss,
)
from sts_lightning.training.logps import completion_logps
from sts_lightning.training.lora import LoraConfig
from sts_lightning.training.optim import OptimizerCallable, check_schedule
from sts_lightning.training.reward_calls import RewardLog, trainer_state
from sts_lightning.training.rewards import RewardFunc, resolve_rewards, reward_name
from sts_lightning.training.rollout import rollout

# LoraConfig: re-exported, older code imports it from here.
__all__ = ["GRPOConfig", "GRPOModule", "LoraConfig", "grpo_advantages", "grpo_loss"]


class GRPOModule(base.HFModelMixin, LightningModule):
    """Fine-tune a causal LM with GRPO from batches of prompts and reward functions.

    Batches are dicts of lists with a ``"prompt"`` key (the user turn) and any other columns,
    which reach the reward functions by name
    (:class:`~sts_lightning.training.data.PromptDataModule`).

    Args:
        model: A checkpoint (``"embedded:smollm2"``, a directory, a hub id) or a loaded HF
            causal LM, which is then trained in place.
        tokenizer: Its tokenizer (or a path); required when ``model`` is an object.
        reward_funcs: TRL-signature reward functions, or dotted paths to them.
        grpo: Sampling, loss and logging settings, ``reward_weights`` among them
            (:class:`GRPOConfig`, or a dict of its fields).
        lora: Train a LoRA adapter instead of every weight (:class:`LoraConfig` or a dict).
        optimizer: Builds the optimizer from parameter groups (in YAML a ``class_path`` and its
            ``init_args``); ``None``: AdamW (:mod:`~sts_lightning.training.optim`).
        learning_rate: Peak learning rate (TRL's default 1e-6), set on every parameter group.
        weight_decay: Decay of matrices (biases and norms are never decayed).
        warmup_steps: Warm-up: optimizer steps when >= 1, a fraction of the run when below 1.
        lr_scheduler_type: A ``transformers.get_scheduler`` name (TRL's default ``"linear"``).
        lr_scheduler_kwargs: The schedule's own arguments (``{"min_lr_rate": 0.1}``, ...).
        max_grad_norm: Gradient-norm clip of every optimizer step; ``None`` disables it.
        system_prompt: An explicit system turn; ``None`` keeps the chat template's default.
        dtype: Weight dtype when ``model`` is loaded by name.
        model_init_kwargs: Extra ``from_pretrained`` arguments when ``model`` is loaded by name
            (``attn_implementation``, ``quantization_config``, ``device_map``, ...).
        seed: Seeds generation, with the step and the rank.
        checkpoint_frozen_weights: Also store frozen weights (a LoRA run's base model) in
            Lightning checkpoints. Off: they are reloaded from ``model`` on restore.
    """

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        tokenizer: Any = None,
        reward_funcs: Sequence[str | RewardFunc] = (
            "sts_lightning.training.rewards.accuracy_reward",
        ),
        grpo: GRPOConfig | None = None,
        lora: LoraConfig | None = None,
        optimizer: OptimizerCallable | None = None,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        warmup_steps: int | float = 0,
        lr_scheduler_type: str = "linear",
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = 1.0,
        system_prompt: str | None = None,
        dtype: str = "float32",
        model_init_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        checkpoint_frozen_weights: bool = False,
    ) -> None:
        super().__init__()
        # Dicts too: checkpoints store these as dicts, so `torch.load(weights_only=True)` works.
        self.grpo = GRPOConfig(**grpo) if isinstance(grpo, dict) else grpo or GRPOConfig()
        self.lora = LoraConfig(**lora) if isinstance(lora, dict) else lora
        self.reward_funcs, weights = resolve_rewards(reward_funcs, self.grpo.reward_weights)
        check_schedule(learning_rate, weight_decay, warmup_steps, lr_scheduler_type,
                       lr_scheduler_kwargs)  # fmt: skip
        check_model_init_kwargs(model_init_kwargs)
        self._optimizer_factory = optimizer
        positive("max_grad_norm", max_grad_norm, optional=True)
        base.keep_model_sources(self, model, tokenizer)
        # Objects (a loaded model, local functions) are not hyperparameters a YAML can restate.
        objects = {"model": model, "tokenizer": tokenizer, "optimizer": optimizer}
        objects["reward_funcs"] = [f for f in reward_funcs if not isinstance(f, str)] or None
        self.save_hyperparameters(
            ignore=[k for k, v in objects.items() if v is not None and not isinstance(v, str)]
        )
        self.hparams.update(
            grpo=asdict(self.grpo), lora=None if self.lora is None else asdict(self.lora)
        )
        self.automatic_optimization = False  # μ optimizer steps per rollout
        self.reward_names = [reward_name(f) for f in self.reward_funcs]
        self.register_buffer("reward_weights", torch.tensor(weights), persistent=False)
        self._val_sums: dict[str, torch.Tensor] = {}
        # Prompt + completion tokens so far, all ranks (TRL's num_tokens); checkpointed.
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long))

    # ----------------------------------------------------------------------------- the model
    @property
    def tokenizer(self):
        """The tokenizer (always with a pad token); loaded on first use when given by name."""
        if self._tokenizer is None:
            source = self._tokenizer_source or self._model_source
            self._tokenizer = base.load_tokenizer(os.fspath(source))
        return self._tokenizer

    @property
    def ref_model(self):
        """The frozen reference when ``beta > 0`` without LoRA (a copy of the initial model);
        ``None`` otherwise (with LoRA the reference is the policy with its adapter off)."""
        self.configure_model()
        return self._ref

    def configure_model(self) -> None:
        """Load (or take) the model and prepare it (idempotent); Lightning calls it before
        fit/validate and on restore."""
        if "model" in self._modules:
            return
        model, cfg = self._model_source, self.grpo
        if isinstance(model, (str, Path)):
            model, tokenizer = load_model_and_tokenizer(
                model, dtype=self.hparams.dtype, model_init_kwargs=self.hparams.model_init_kwargs
            )
            if self._tokenizer is None and self._tokenizer_source is None:
                self._tokenizer = tokenizer
        for layer in model.modules() if cfg.disable_dropout else ():
            if isinstance(layer, torch.nn.Dropout):
                layer.p = 0.0
        frozen_copy = cfg.beta != 0.0 and self.lora is None  # with LoRA: the adapter off
        ref = copy.deepcopy(model).eval().requires_grad_(False) if frozen_copy else None
        object.__setattr__(self, "_ref", ref)
        model = base.prepare_model(
            model, gradient_checkpointing=cfg.gradient_checkpointing, lora=self.lora
        )
        self._install_model(model)

    # ----------------------------------------------------------------------------- rollout
    def _rollout(self, batch: Any, *, train=True, batch_idx=0, log=None) -> dict[str, Any]:
        """Sample (greedy, 1 per prompt, when not ``train``) and score completions."""
        cfg, tokens = self.grpo, int(self.tokens_seen)  # TRL's state: see reward_calls
        seed = (self.hparams.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank
        return rollout(
            self.model, self.tokenizer, batch, self.reward_funcs, cfg,
            seed=seed if train else None, system_prompt=self.hparams.system_prompt, log=log,
            state=trainer_state(self._trainer, batch_idx, tokens, cfg.num_iterations),
        )  # fmt: skip

    def _logps(self, model, rollout: dict[str, Any], rows=slice(None), **kwargs: Any):
        return completion_logps(
            model,
            rollout["input_ids"][rows],
            rollout["attention_mask"][rows],
            rollout["completion_mask"].size(1),
            temperature=self.grpo.temperature,
            batch_size=self.grpo.micro_batch_size,
            **kwargs,
        )

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self._trainer is None or self.trainer.world_size == 1:
            return x
        return self.all_gather(x).flatten(0, 1)  # (world, N, ...) → (world * N, ...)

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One rollout, then ``num_iterations`` optimizer steps on it."""
        cfg, log = self.grpo, RewardLog()
        rollout = self._rollout(batch, batch_idx=batch_idx, log=log)
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
                ref = self._ref  # None with LoRA: the policy with its adapter off
                if ref is not None:  # follows the policy's device and (precision plugin) dtype
                    ref.to(device=self.device, dtype=next(self.model.parameters()).dtype)
                with self.model.disable_adapter() if ref is None else nullcontext():
                    rollout["ref_logps"] = self._logps(self.model if ref is None else ref, rollout)
        sums = [self._optimizer_step(rollout) for _ in range(cfg.num_iterations)]
        grpo_logging.log_train_step(self, rollout, rewards, rewards_per_func, advantages, sums, log)

    def _normalizer(self, mask: torch.Tensor) -> torch.Tensor | int:
        """The whole rollout's loss denominator (every micro-batch divides by it)."""
        if self.grpo.loss_type == "dapo":
            # Global token count / world size: DDP's gradient mean then equals the gradient of
            # (sum over every rank's tokens) / (their count), as TRL's num_items_in_batch.
            world = self.trainer.world_size if self._trainer is not None else 1
            return self._gather(mask.sum().float().reshape(1)).sum().clamp(min=1) / world
        if self.grpo.loss_type == "bnpo":
            return mask.sum().clamp(min=1)
        dr_grpo = self.grpo.loss_type == "dr_grpo"
        return mask.size(0) * (self.grpo.max_completion_length if dr_grpo else 1)

    def _optimizer_step(self, rollout: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg, opt = self.grpo, self.optimizers()
        mask, n = rollout["completion_mask"], rollout["completion_mask"].size(0)
        normalizer, step = self._normalizer(mask), cfg.micro_batch_size or n
        totals: dict[str, float] = {}
        opt.zero_grad()
        for start in range(0, n, step):
            rows = slice(start, start + step)
            logps, entropy = self._logps(self.model, rollout, rows, with_entropy=True)
            loss, sums = rollout_loss(logps, rollout, rows, cfg, normalizer)
            sums["entropy"] = (entropy * mask[rows]).sum()  # TRL logs it; no grad
            self.manual_backward(loss)
            for key, value in (("loss", loss), *sums.items()):
                totals[key] = totals.get(key, 0.0) + value.item()
        if self.hparams.max_grad_norm is not None:
            self.clip_gradients(opt, self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        self.lr_schedulers().step()
        return totals

    # ----------------------------------------------------------------------------- validation
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Scores one greedy completion per prompt; sums per loader (its ``"name"``)."""
        out = self._rollout(batch, train=False, batch_idx=batch_idx)
        rewards = combine_rewards(per_func := out["rewards_per_func"], self.reward_weights)
        sums = metrics.validation_sums(rewards, per_func, out["length"], out["truncated"])
        name = batch.get("name") if isinstance(batch, dict) else None
        name = name if isinstance(name, str) else str(dataloader_idx)
        self._val_sums[name] = self._val_sums.get(name, 0) + sums  # (3, 3 + F)

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        names, sums = self._reduce_named(self._val_sums)  # (loaders, 3, 3 + F)
        means = metrics.validation_metrics(names, sums, self.reward_names)
        # Equal on every rank already; sync_dist only keeps Lightning's distributed check quiet.
        self.log_dict(means, add_dataloader_idx=False, sync_dist=True)
        self._val_sums = {}

    # ----------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        total = optim.run_length(self._trainer, steps_per_batch=self.grpo.num_iterations)
        return optim.configure(self, self._optimizer_factory, self.hparams, total)

"""Fine-tune one (source task, seed) with the STS callback on, and hand back the trained model."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sts_lightning.data.prompts import Example
from sts_lightning.experiment.config import ExperimentConfig
from sts_lightning.experiment.memory import release_memory
from sts_lightning.forecast.prediction import Prediction

__all__ = ["finetune", "task_reward"]

log = logging.getLogger(__name__)


def _no_deltas(model, tokenizer) -> dict[str, float]:
    # The experiment measures realised losses itself, on more items and paired by item; the
    # callback only tracks the latent shift (overlap@k over steps).
    return {}


def task_reward(task: str | None):
    """``score(completion, example) -> float`` with the task's checker (exact match = 1.0)."""
    from sts_lightning.training.rewards import accuracy_reward

    def score(completion: str, example: Example) -> float:
        value = accuracy_reward(
            [example.prompt], [completion], answer=[example.answer], task=[task]
        )[0]
        if value is None:  # no number and no named checker: plain string match
            return float(completion.strip() == str(example.answer).strip())
        return value

    return score


def _model_kw(job: ExperimentConfig) -> dict[str, Any]:
    """How the experiment's model is loaded, for every fine-tuning method."""
    return dict(dtype=job.dtype, trust_remote_code=job.trust_remote_code, cache_dir=job.cache_dir)


def _sft(job: ExperimentConfig, examples: Sequence[Example], n: int, seed: int):
    """``(module, datamodule)`` for supervised fine-tuning on ``n`` of ``examples``."""
    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.training.sft import SFTModule

    ft = job.finetune
    module = SFTModule(
        job.model,
        **_model_kw(job),
        lora=ft.lora,
        gradient_checkpointing=ft.gradient_checkpointing,
        micro_batch_size=ft.micro_batch_size,
        learning_rate=ft.lr,
        warmup_steps=min(ft.warmup_steps, ft.steps - 1),
        save_hf_on_fit_end=False,
    )
    data = SFTDataModule(
        list(examples),
        train_size=n,
        batch_size=ft.batch_size,
        seed=seed,
        max_length=ft.max_length,
        group_by_length=ft.group_by_length,
    )
    return module, data


def _grpo(
    job: ExperimentConfig, task: str, builtin: bool, examples: Sequence[Example], n: int, seed: int
):
    """``(module, datamodule)`` for GRPO on ``n`` of ``examples`` (the task's reward checker)."""
    from sts_lightning.model.loading import load_model_and_tokenizer
    from sts_lightning.training.data import PromptDataModule
    from sts_lightning.training.grpo import GRPOModule
    from sts_lightning.training.grpo_loss import GRPOConfig

    ft = job.finetune
    model, tokenizer = load_model_and_tokenizer(job.model, **_model_kw(job))
    module = GRPOModule(
        model,
        tokenizer,
        grpo=GRPOConfig(
            num_generations=ft.num_generations, max_completion_length=ft.max_completion_length
        ),
        lora=ft.lora,
        learning_rate=ft.lr,
        warmup_steps=ft.warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        seed=seed,
    )
    rows = [
        {"prompt": e.prompt, "answer": e.answer, **({"task": task} if builtin else {})}
        for e in examples
    ]
    return module, PromptDataModule(rows, train_size=n, batch_size=ft.batch_size, seed=seed)


def _loggers(job: ExperimentConfig, name: str, log_dir: Path) -> list[Any]:
    """A CSV logger in ``log_dir``, and with ``job.wandb`` a W&B run ``name`` of the group."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from sts_lightning.experiment.config import wandb_logger_kwargs

    loggers: list[Any] = [CSVLogger(str(log_dir), name="", version="")]
    if job.wandb:
        loggers.append(WandbLogger(**wandb_logger_kwargs(vars(job), name, str(log_dir))))
    return loggers


def _trainer(job: ExperimentConfig, sft: bool, loggers: list[Any], callbacks: list[Any]):
    """The Lightning ``Trainer`` of one fine-tuning run: ``job.finetune.steps`` steps, no
    checkpoints, no validation."""
    from lightning.pytorch import Trainer

    from sts_lightning.model.device import resolve_device
    from sts_lightning.model.precision import resolve_precision

    ft = job.finetune
    device = resolve_device(job.device)
    return Trainer(
        accelerator="auto",
        devices=1,
        max_steps=ft.steps,
        precision=resolve_precision(ft.precision, device, "finetune.precision"),
        accumulate_grad_batches=ft.accumulate if sft else 1,
        logger=loggers,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=1,
        gradient_clip_val=1.0 if sft else None,  # GRPO clips inside its manual optimisation
        callbacks=callbacks,
    )


def _drop_training_state(trainer: Any, model: Any) -> None:
    """Free the optimizer state (two tensors per trained weight) and the last step's gradients
    as soon as training ends: the model handed back is only evaluated."""
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
    trainer.strategy.optimizers, trainer.strategy.lr_scheduler_configs = [], []
    model.zero_grad(set_to_none=True)


def finetune(
    job: ExperimentConfig,
    task: str,
    builtin: bool,
    examples: Sequence[Example],
    seed: int,
    sae: Any,
    prediction: Prediction,
    domains: Mapping[str, Sequence[Example]],
    log_dir: Path,
    callbacks: Sequence[Any] = (),
):
    """Fit ``job.finetune.method`` on ``examples`` (seeded subset and order).

    ``job.finetune.steps`` is the run's step budget; ``callbacks`` (e.g.
    :class:`~sts_lightning.experiment.learned_stop.LearnedStop`) join the STS callback.

    Returns:
        ``(model, tokenizer, tracker)``: the fine-tuned HF model (with LoRA, the adapter merged
        into its weights), its tokenizer and the STS callback's tracker (its ``history`` holds
        the realised shift over steps, ``last_shift`` the latest one). Nothing else of the run
        outlives the call: the optimizer state, the gradients, the trainer and the module are
        freed before it returns.
    """
    from lightning.pytorch import seed_everything

    from sts_lightning.callbacks import STSCallback

    ft = job.finetune
    seed_everything(seed, verbose=False)
    n = min(len(examples), ft.steps * ft.batch_size * ft.accumulate)
    callback = STSCallback(
        sae,
        dict(domains),
        train_examples=list(examples),
        layer=prediction.layer,
        k=len(prediction.top_latents),
        every_n_steps=ft.track_every,
        predict_config=job.predict,
        evaluator=_no_deltas,
        forecast=prediction,
        dirpath=str(log_dir),
    )
    sft = ft.method == "sft"
    module, data = (
        _sft(job, examples, n, seed) if sft else _grpo(job, task, builtin, examples, n, seed)
    )
    loggers = _loggers(job, f"{task}-seed{seed}", log_dir)
    trainer = _trainer(job, sft, loggers, [callback, *callbacks])
    try:
        trainer.fit(module, datamodule=data)
    finally:
        for logger in loggers[1:]:  # end this W&B run: the next fine-tune starts its own
            logger.experiment.finish()
    model, tokenizer, tracker = module.model, module.tokenizer, callback.tracker
    _drop_training_state(trainer, model)
    if hasattr(model, "merge_and_unload"):
        # A LoRA adapter folded into the weights: the same function, evaluated without the
        # adapter's extra matrix products (a forward costs the base model's).
        model = model.merge_and_unload()
    # The trainer, module and optimizer refer to each other: only a collection frees them.
    del trainer, module, data, callback, loggers
    release_memory()
    if tracker is None:
        raise RuntimeError(f"the STS callback failed for task {task!r}, seed {seed}: see warnings")
    return model, tokenizer, tracker

"""GRPO half of ``benchmarks/sft_vs_trl.py``: ``GRPOModule`` against TRL's ``GRPOTrainer``.

Same checkpoint, prompts, reward function (our ``accuracy_reward``, which both call with TRL's
signature), group size, completion budget, learning rate and AdamW; TRL with ``bf16=False``,
``gradient_checkpointing=False`` and ``beta=0`` (its default, ours too), so neither side keeps a
reference model. A step is one rollout (``B`` prompts × ``G`` completions), the loss and one
optimizer step on both sides (``num_iterations=1``; TRL's ``per_device_train_batch_size`` counts
completions, so it is ``B * G``). Sampling is random on both sides, so completion lengths differ
between runs; the tiny random model rarely stops before the budget, SmolLM2 often does.

Run through ``sft_vs_trl.py --methods grpo`` (or both, the default).
"""

from __future__ import annotations

import itertools
import tempfile
import time

REWARD = "sts_lightning.training.rewards.accuracy_reward"


def _rows(examples) -> list[dict[str, str]]:
    return [{"prompt": e.prompt, "answer": e.answer} for e in examples]


def run_lightning_grpo(checkpoint: str, examples, *, batch_size: int, steps: int, lr: float,
                       generations: int, completion_length: int) -> list[float]:  # fmt: skip
    """Step-end times of ``GRPOModule`` under a Lightning ``Trainer``."""
    from lightning.pytorch import Callback, Trainer, seed_everything

    from sts_lightning.training.data import PromptDataModule
    from sts_lightning.training.grpo import GRPOModule
    from sts_lightning.training.grpo_config import GRPOConfig

    ends: list[float] = []

    class Clock(Callback):
        def on_train_batch_end(self, *args) -> None:
            ends.append(time.perf_counter())

    seed_everything(0)
    config = GRPOConfig(num_generations=generations, max_completion_length=completion_length)
    module = GRPOModule(checkpoint, reward_funcs=[REWARD], grpo=config, learning_rate=lr)
    data = PromptDataModule(_rows(examples), train_size=None, batch_size=batch_size, seed=0)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    trainer.fit(module, data)
    return [b - a for a, b in itertools.pairwise(ends)]


def run_trl_grpo(checkpoint: str, examples, *, batch_size: int, steps: int, lr: float,
                 generations: int, completion_length: int) -> list[float]:  # fmt: skip
    """Step-end times of TRL's ``GRPOTrainer`` on the same rows (conversational prompts)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sts_lightning.model.loading import load_model_and_tokenizer
    from sts_lightning.training.rewards import accuracy_reward

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs) -> None:
            ends.append(time.perf_counter())

    model, tokenizer = load_model_and_tokenizer(checkpoint)
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
            for r in _rows(examples)]  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=batch_size * generations,
            num_generations=generations,
            max_completion_length=completion_length,
            max_steps=steps,
            learning_rate=lr,
            optim="adamw_torch_fused",
            bf16=False,
            gradient_checkpointing=False,
            logging_steps=steps + 1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[accuracy_reward],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        trainer.train()
    return [b - a for a, b in itertools.pairwise(ends)]

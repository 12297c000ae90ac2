"""GRPO half of ``benchmarks/sft_vs_trl.py``: ``GRPOModule`` against TRL's ``GRPOTrainer``.

Same checkpoint, prompts, reward function (our ``accuracy_reward``, which both call with TRL's
signature), group size, completion budget, learning rate and AdamW, and ``beta=0`` (TRL's
default, ours too), so neither side keeps a reference model. Both sides run in fp32 and, where
the CPU has native bf16, under bf16 autocast (``precision="bf16-mixed"`` / ``bf16=True``); TRL
without gradient checkpointing and also with its CPU defaults (bf16 and checkpointing), and the
ratios are taken to its fastest run. A step is one rollout (``B`` prompts × ``G``
completions), the loss and one optimizer step on both sides (``num_iterations=1``; TRL's
``per_device_train_batch_size`` counts completions, so it is ``B * G``). Sampling is random on
both sides, so completion lengths differ between runs; the tiny random model rarely stops
before the budget, SmolLM2 often does.

Run as ``sft_vs_trl.py --methods grpo`` (this script, run directly, does that; the same
options).
"""

from __future__ import annotations

import itertools
import tempfile
import time

REWARD = "sts_lightning.training.rewards.accuracy_reward"


def _rows(examples) -> list[dict[str, str]]:
    return [{"prompt": e.prompt, "answer": e.answer} for e in examples]


def run_lightning_grpo(checkpoint: str, examples, *, batch_size: int, steps: int, lr: float,
                       generations: int, completion_length: int,
                       precision: str = "fp32") -> list[float]:  # fmt: skip
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
        precision={"fp32": "32-true", "bf16": "bf16-mixed"}[precision],
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
                 generations: int, completion_length: int, precision: str = "fp32",
                 checkpointing: bool = False) -> list[float]:  # fmt: skip
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
            bf16=precision == "bf16",
            gradient_checkpointing=checkpointing,
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


if __name__ == "__main__":
    import sys

    from sft_vs_trl import main

    sys.argv[1:1] = ["--methods", "grpo"]  # a --methods given after it still wins
    main()

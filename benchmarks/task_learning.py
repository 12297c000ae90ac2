"""Benchmark: is each source task learned under an experiment recipe's fine-tuning settings?

For one task at a time, the experiment's own pieces: its training pool (``task_examples``,
seed 0), its held-out problems (``evaluation.task_items``, seed 10,000, disjoint from the pool),
the fine-tuning module and data of ``finetune`` (:func:`sts_lightning.experiment.finetune._sft`)
under a Lightning ``Trainer`` with the experiment's clipping, and the learned rule of
``finetune.learned_margin``. The STS callback is left out: it measures, it does not train. Prints
answer NLL and exact match before/after with their intervals, the verdict and seconds per step.

    .venv/bin/python benchmarks/task_learning.py --config recipes/experiment_mmlu_smollm2.yaml \
        --task arithmetic [--steps 40 --batch_size 8 --accumulate 4 --lr 1e-4] [--lora_r 16]

``--lora_r R`` trains a rank-R LoRA adapter on every linear layer (alpha 2R) instead of the
recipe's ``finetune.lora``.

A script: it prints one JSON line per task.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _steps_timer():
    from lightning.pytorch import Callback

    class Timer(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, *args, **kwargs) -> None:
            self.ends.append(time.perf_counter())

    return Timer()


def measure(job, task: str, seed: int = 0) -> dict:
    """Fine-tune ``task`` as the experiment does and judge it with the recipe's rule."""
    from lightning.pytorch import Trainer, seed_everything

    from sts_lightning.data.domains import load_training_set
    from sts_lightning.experiment.finetune import _sft, task_reward
    from sts_lightning.experiment.task_learning import is_learned, task_change
    from sts_lightning.experiment.task_probe import TaskProbe
    from sts_lightning.model.loading import load_model_and_tokenizer
    from sts_lightning.model.precision import resolve_precision

    ft = job.finetune
    pool = load_training_set(task, job.task_examples, seed=0)
    held = load_training_set(task, job.evaluation.task_items, seed=10_000, exclude=pool)
    model, tokenizer = load_model_and_tokenizer(job.model, dtype=job.dtype)
    probe = TaskProbe.build(tokenizer, held, task_reward(task))
    t0 = time.perf_counter()
    before = probe.measure(model, tokenizer, batch_size=job.evaluation.batch_size)
    eval_s = time.perf_counter() - t0
    seed_everything(seed, verbose=False)
    n = min(len(pool), ft.steps * ft.batch_size * ft.accumulate)
    module, data = _sft(job, pool, n, seed)
    timer = _steps_timer()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=ft.steps, precision=resolve_precision(ft.precision),
        accumulate_grad_batches=ft.accumulate, logger=False, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
        limit_val_batches=0, gradient_clip_val=1.0, callbacks=[timer],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_s = time.perf_counter() - start
    after = probe.measure(module.model, tokenizer, batch_size=job.evaluation.batch_size)
    change = task_change(
        before["nll"], after["nll"], before["counts"], before["correct"], after["correct"],
        confidence=ft.learned_margin.confidence,
    )  # fmt: skip
    learned, reasons = is_learned(change, ft.learned_margin)
    gaps = [b - a for a, b in zip(timer.ends, timer.ends[1:], strict=False)]
    return {
        "task": task, "steps": ft.steps, "batch_size": ft.batch_size,
        "accumulate": ft.accumulate, "lr": ft.lr, "lora_r": ft.lora.r if ft.lora else None,
        "learned": learned, "reasons": reasons, **change,
        "s_per_step": sorted(gaps)[len(gaps) // 2] if gaps else fit_s / ft.steps,
        "fit_s": fit_s, "eval_s": eval_s,
    }  # fmt: skip


def main() -> None:
    from sts_lightning.cli.experiment import load_experiment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/experiment_mmlu_smollm2.yaml")
    parser.add_argument("--task", action="append", required=True)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch_size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--accumulate", type=int)
    parser.add_argument("--task_items", type=int)
    parser.add_argument("--task_examples", type=int)
    parser.add_argument("--lora_r", type=int, help="train a LoRA adapter of this rank")
    args = parser.parse_args()
    job = load_experiment(args.config)
    job.task_examples = args.task_examples or job.task_examples
    override = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "accumulate")}
    job.finetune = replace(job.finetune, **{k: v for k, v in override.items() if v is not None})
    if args.lora_r is not None:
        from sts_lightning.training.lora import LoraConfig

        job.finetune = replace(job.finetune, lora=LoraConfig(r=args.lora_r, alpha=2 * args.lora_r))
    if args.task_items is not None:
        job.evaluation = replace(job.evaluation, task_items=args.task_items)
    for task in args.task:
        print(json.dumps(measure(job, task)), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: per-step time and peak memory of ``SFTModule`` and ``GRPOModule`` (Lightning)
against TRL's ``SFTTrainer`` and ``GRPOTrainer``, on CPU.

Same model checkpoint, same examples, same batch size, same learning rate and optimizer
(fused AdamW), loss on the completion only in both; TRL with ``bf16=False`` and
``gradient_checkpointing=False`` (its CPU defaults are slower, see INSTALL.md). Each trainer runs
``--steps`` optimizer steps; a step's time is the interval between consecutive step ends (data,
forward, backward, optimizer, logging), and the median over the steps after the first is
reported. Runs alternate (Lightning, TRL, Lightning, TRL...) so machine load hits both alike.
Each run is a fresh process: its peak resident memory (``ru_maxrss``: imports, model, optimizer
state, activations) is the run's own. GRPO's settings: see ``benchmarks/grpo_vs_trl.py``.

    .venv/bin/python benchmarks/sft_vs_trl.py                      # tiny + SmolLM2, SFT + GRPO
    .venv/bin/python benchmarks/sft_vs_trl.py --models tiny --methods grpo --threads 1

On a shared machine, a second process on the cores slows multi-threaded ops by up to 100x
(each op waits for a descheduled thread): compare ratios from the same run only.

SmolLM2 ties its input and output embeddings; ``SFTModule`` freezes that matrix by default, so
TRL runs twice there: as shipped (every weight trained) and with the same matrix frozen. A
script: it prints.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from sts_lightning.data.domains import load_training_set
from sts_lightning.model.loading import load_model_and_tokenizer, resolve_model

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_checkpoint(directory: Path, texts: list[str]) -> str:
    """A random Llama (hidden 64, 2 layers) and a BPE tokenizer trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=special, initial_alphabet=alphabet
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=special[1], eos_token=special[2], pad_token=special[0]
    )
    fast.chat_template = CHATML
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    fast.save_pretrained(directory)
    return str(directory)


class _StepClock:
    """Wall time at each step end; shared by the Lightning and the HF callback below."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]


def run_lightning(
    checkpoint: str, examples, *, batch_size: int, steps: int, lr: float
) -> list[float]:
    from lightning.pytorch import Callback, Trainer, seed_everything

    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.training.sft import SFTModule

    clock = _StepClock()

    class Clock(Callback):
        def on_train_batch_end(self, *args) -> None:
            clock.ends.append(time.perf_counter())

    seed_everything(0)
    module = SFTModule(checkpoint, learning_rate=lr, save_hf_on_fit_end=False)
    data = SFTDataModule(examples, train_size=None, batch_size=batch_size, max_length=384)
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
    return clock.step_times()


def run_trl(
    checkpoint: str, examples, *, batch_size: int, steps: int, lr: float, freeze_tied: bool
) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    clock = _StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs) -> None:
            clock.ends.append(time.perf_counter())

    from sts_lightning.training.base import prepare_model

    model, tokenizer = load_model_and_tokenizer(checkpoint)
    # SFTModule's own freeze, so both sides train the same parameters.
    model = prepare_model(model, freeze_tied_embeddings=freeze_tied)
    rows = [
        {
            "prompt": [{"role": "user", "content": e.prompt}],
            "completion": [{"role": "assistant", "content": e.answer}],
        }
        for e in examples
    ]
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            optim="adamw_torch_fused",
            bf16=False,
            gradient_checkpointing=False,
            max_length=384,
            logging_steps=steps + 1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        trainer.train()
    return clock.step_times()


def _child(queue, threads: int, fn, args, kwargs) -> None:
    if threads:
        torch.set_num_threads(threads)
    times = fn(*args, **kwargs)
    queue.put((times, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))  # KiB → MiB


def in_child(threads: int, fn, *args, **kwargs) -> tuple[list[float], float]:
    """``fn(*args, **kwargs)``'s step times in a fresh process, and that process's peak RSS."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, threads, fn, args, kwargs))
    process.start()
    result = queue.get()
    process.join()
    return result


def _runs(method: str, name: str, checkpoint: str, examples, args) -> dict[str, tuple]:
    """``{label: (function, kwargs)}``; the first label is ours, the ratios' denominator."""
    kw = dict(batch_size=args.batch_size, steps=args.steps, lr=args.lr)
    if method == "grpo":
        from grpo_vs_trl import run_lightning_grpo, run_trl_grpo

        kw |= dict(generations=args.generations, completion_length=args.completion_length)
        kw["batch_size"] = max(1, args.batch_size // args.generations)  # prompts per step
        return {"GRPOModule": (run_lightning_grpo, kw), "TRL GRPOTrainer": (run_trl_grpo, kw)}
    runs = {
        "SFTModule": (run_lightning, kw),
        "TRL SFTTrainer": (run_trl, kw | {"freeze_tied": False}),
    }
    if name != "tiny":  # tied embeddings: also TRL with the matrix SFTModule freezes frozen
        runs["TRL, tied embedding frozen"] = (run_trl, kw | {"freeze_tied": True})
    return runs


def bench(method: str, name: str, checkpoint: str, examples, args) -> None:
    runs = _runs(method, name, checkpoint, examples, args)
    times: dict[str, list[float]] = {label: [] for label in runs}
    per_run: dict[str, list[float]] = {label: [] for label in runs}
    peak: dict[str, float] = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeats):
        for label, (fn, kw) in runs.items():
            steps, rss = in_child(args.threads, fn, checkpoint, examples, **kw)
            times[label] += steps[1:]  # the first interval includes warm-up
            per_run[label].append(statistics.median(steps[1:]))
            peak[label] = max(peak[label], rss)
    ours = next(iter(runs))
    t0, m0 = statistics.median(times[ours]), peak[ours]
    print(
        f"\n{method.upper()} {name}: batch {args.batch_size} sequences, {args.steps} steps x "
        f"{args.repeats} runs, {args.threads or torch.get_num_threads()} threads; median s/step "
        "(and per run), first step dropped; peak RSS of the run's process"
    )
    for label, steps in times.items():
        t, each = statistics.median(steps), ", ".join(f"{x:.3f}" for x in per_run[label])
        print(
            f"  {label:28s} {t:8.3f} s/step  ({each})  {t / t0:5.2f}x time   "
            f"{peak[label]:7.0f} MiB  {peak[label] / m0:5.2f}x memory  (ratios to {ours})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2", help="comma list: tiny, smollm2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=0, help="0: 30 (tiny) / 5 (smollm2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--methods", default="sft,grpo", help="comma list: sft, grpo")
    parser.add_argument("--generations", type=int, default=4, help="GRPO group size G")
    parser.add_argument("--completion-length", type=int, default=16, help="GRPO token budget")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for name in args.models.split(","):
        examples = load_training_set("arithmetic", 64 * args.batch_size, seed=0)
        run_args = argparse.Namespace(**vars(args))
        run_args.steps = args.steps or (30 if name == "tiny" else 5)
        if name == "tiny":
            tmp = Path(tempfile.mkdtemp(prefix="sft_bench_"))
            texts = [e.prompt + " " + e.answer for e in examples]
            checkpoint = tiny_checkpoint(tmp, texts)
        elif name == "smollm2":
            checkpoint = resolve_model("embedded:smollm2")
        else:
            raise SystemExit(f"--models: unknown model {name!r} (tiny, smollm2)")
        for method in args.methods.split(","):
            if method not in ("sft", "grpo"):
                raise SystemExit(f"--methods: unknown method {method!r} (sft, grpo)")
            bench(method, name, checkpoint, examples, run_args)


if __name__ == "__main__":
    main()

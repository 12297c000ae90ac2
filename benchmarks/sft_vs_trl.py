"""Benchmark: per-step time and peak memory of ``SFTModule`` and ``GRPOModule`` (Lightning)
against TRL's ``SFTTrainer`` and ``GRPOTrainer`` at its fastest setting, on CPU.

Same model checkpoint, same examples, same batch size, same learning rate and optimizer
(fused AdamW), gradients clipped to norm 1 (TRL's default), batches grouped by length
(``SFTDataModule``'s default; TRL's ``train_sampling_strategy="group_by_length"``), loss on
the completion only in both. Each side runs in every precision that can
be its fastest on this machine: fp32, and, where the CPU computes bf16 natively (AVX512-BF16 or
AMX, as ``torch.cpu`` reports them; ``--bf16`` overrides), bf16 autocast (Lightning's
``precision="bf16-mixed"``, TRL's ``bf16=True``). TRL runs without gradient checkpointing (its
CPU default, which recomputes activations: slower when memory is not short) and, where bf16
runs, also with its CPU defaults as shipped (``bf16=True``, ``gradient_checkpointing=True``).
Ratios are taken to TRL's fastest run. Where the CPU lacks native bf16, bf16 autocast is
emulated and slower than fp32, so both sides run fp32 only.

Each trainer runs ``--steps`` optimizer steps; a step's time is the interval between
consecutive step ends (data, forward, backward, optimizer, logging), and the median over the
steps after the first is reported. Runs alternate (ours, TRL, ours, TRL...) so machine load
hits both alike. Each run is a fresh process: its peak resident memory (``ru_maxrss``:
imports, model, optimizer state, activations) is the run's own. GRPO's settings: see
``benchmarks/grpo_vs_trl.py``.

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
import contextlib
import itertools
import logging
import multiprocessing
import os
import queue as queue_module
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from sts_lightning.data.domains import load_training_set
from sts_lightning.model.loading import load_model_and_tokenizer, resolve_model
from sts_lightning.model.precision import native_bf16

PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
"""Precision labels → Lightning's names; TRL's ``bf16`` flag is ``label == "bf16"``."""

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
    checkpoint: str, examples, *, batch_size: int, steps: int, lr: float, precision: str
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
        precision=PRECISIONS[precision],
        gradient_clip_val=1.0,  # TRL's max_grad_norm default
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
    checkpoint: str,
    examples,
    *,
    batch_size: int,
    steps: int,
    lr: float,
    precision: str,
    freeze_tied: bool,
    checkpointing: bool = False,
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
            bf16=precision == "bf16",
            gradient_checkpointing=checkpointing,
            train_sampling_strategy="group_by_length",  # as SFTDataModule's default
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


def _quiet() -> None:
    """Only the table: no banners, warnings or progress bars from the libraries."""
    import datasets
    import lightning.pytorch  # noqa: F401 (sets its loggers' levels: lowered below)
    import transformers

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _child(queue, threads: int, fn, args, kwargs) -> None:
    if threads:
        torch.set_num_threads(threads)
    _quiet()
    # stdout too: TRL prints its final metrics.
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        times = fn(*args, **kwargs)
    queue.put((times, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))  # KiB → MiB


def in_child(threads: int, fn, *args, **kwargs) -> tuple[list[float], float]:
    """``fn(*args, **kwargs)``'s step times in a fresh process, and that process's peak RSS."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, threads, fn, args, kwargs))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():  # it failed: its traceback is on stderr already
                raise SystemExit(f"{fn.__name__} failed (exit code {process.exitcode})") from None
    process.join()
    return result


def _runs(method: str, name: str, args) -> dict[str, tuple]:
    """``{label: (function, kwargs)}``: ours first, then TRL's, in each of ``args.precisions``."""
    kw = dict(batch_size=args.batch_size, steps=args.steps, lr=args.lr)
    if method == "grpo":
        from grpo_vs_trl import run_lightning_grpo, run_trl_grpo

        kw |= dict(generations=args.generations, completion_length=args.completion_length)
        kw["batch_size"] = max(1, args.batch_size // args.generations)  # prompts per step
        ours = {f"GRPOModule {p}": (run_lightning_grpo, kw | {"precision": p})
                for p in args.precisions}  # fmt: skip
        trl = {f"TRL GRPOTrainer {p}": (run_trl_grpo, kw | {"precision": p})
               for p in args.precisions}  # fmt: skip
        if "bf16" in args.precisions:
            trl["TRL GRPOTrainer CPU defaults"] = (
                run_trl_grpo, kw | {"precision": "bf16", "checkpointing": True}
            )  # fmt: skip
        return ours | trl
    ours = {f"SFTModule {p}": (run_lightning, kw | {"precision": p}) for p in args.precisions}
    trl = {f"TRL SFTTrainer {p}": (run_trl, kw | {"precision": p, "freeze_tied": False})
           for p in args.precisions}  # fmt: skip
    if "bf16" in args.precisions:  # bf16 and gradient checkpointing, as TRL ships for CPU
        trl["TRL SFTTrainer CPU defaults"] = (
            run_trl, kw | {"precision": "bf16", "freeze_tied": False, "checkpointing": True}
        )  # fmt: skip
    if name != "tiny":  # tied embeddings: also TRL with the matrix SFTModule freezes frozen
        for p in args.precisions:
            trl[f"TRL {p}, tied embedding frozen"] = (
                run_trl, kw | {"precision": p, "freeze_tied": True}
            )  # fmt: skip
    return ours | trl


def bench(method: str, name: str, checkpoint: str, examples, args) -> None:
    runs = _runs(method, name, args)
    times: dict[str, list[float]] = {label: [] for label in runs}
    per_run: dict[str, list[float]] = {label: [] for label in runs}
    peak: dict[str, float] = dict.fromkeys(runs, 0.0)
    ours = [label for label in runs if not label.startswith("TRL")]
    trl = [label for label in runs if label.startswith("TRL")]
    # Alternate ours and TRL's, so that a change in machine load hits both sides alike.
    order = [x for pair in itertools.zip_longest(ours, trl) for x in pair if x is not None]
    for _ in range(args.repeats):
        for label in order:
            fn, kw = runs[label]
            steps, rss = in_child(args.threads, fn, checkpoint, examples, **kw)
            times[label] += steps[1:]  # the first interval includes warm-up
            per_run[label].append(statistics.median(steps[1:]))
            peak[label] = max(peak[label], rss)
    median = {label: statistics.median(steps) for label, steps in times.items()}
    best_trl = min(trl, key=median.__getitem__)
    best_ours = min(ours, key=median.__getitem__)
    t0, m0 = median[best_trl], peak[best_trl]
    print(
        f"\n{method.upper()} {name}: batch {args.batch_size} sequences, {args.steps} steps x "
        f"{args.repeats} runs, {args.threads or torch.get_num_threads()} threads, native bf16: "
        f"{'yes' if args.native_bf16 else 'no'}; median s/step (and per run), first step "
        f"dropped; peak RSS of the run's process; ratios to TRL's fastest ({best_trl})"
    )
    for label in runs:
        t, each = median[label], ", ".join(f"{x:.3f}" for x in per_run[label])
        print(
            f"  {label:34s} {t:8.3f} s/step  ({each})  {t0 / t:5.2f}x speed   "
            f"{peak[label]:7.0f} MiB  {peak[label] / m0:5.2f}x memory"
        )
    print(
        f"  speed-up over TRL at its fastest (its s/step / ours): {t0 / median[best_ours]:.2f}x "
        f"({best_ours} {median[best_ours]:.3f} vs {best_trl} {t0:.3f} s/step)"
    )
    for p in args.precisions:  # like for like, precision by precision
        a, b = f"{ours[0].split()[0]} {p}", next(x for x in trl if x.endswith(f"Trainer {p}"))
        print(f"  speed-up in {p} alone: {median[b] / median[a]:.2f}x ({b} / {a})")


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
    parser.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="also run both sides under bf16 autocast: auto = where the CPU has native bf16",
    )
    args = parser.parse_args()
    if 0 < args.steps < 3:
        parser.error("--steps must be at least 3 (the first step's time is dropped)")
    args.native_bf16 = native_bf16("cpu")
    use_bf16 = args.native_bf16 if args.bf16 == "auto" else args.bf16 == "on"
    args.precisions = ["fp32", "bf16"] if use_bf16 else ["fp32"]
    logging.basicConfig(level=logging.WARNING)
    _quiet()
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

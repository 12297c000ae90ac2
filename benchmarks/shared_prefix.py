"""Benchmark: a shared prompt prefix run once per batch against every row run whole, side by side.

Rows through a chat template begin alike (SmolLM2's system prompt and turn header: 24 tokens);
:func:`~sts_lightning.monitor.teacher_forcing.scored_logits` runs that prefix once and the rest
of every row on its key-value cache. Two workloads of the README experiment
(``recipes/experiment_smollm2.yaml``) on SmolLM2-135M-Instruct under bf16 autocast, each timed
with the prefix shared and with it switched off (``MIN_SHARED_PREFIX`` set out of reach),
alternating so that machine load hits both alike:

1. **held-out pass**: the answers-only pass over every skill's held-out items (layer-12 rows
   kept), as each fine-tuned model is measured;
2. **SFT steps**: forward and backward of the first ``--steps`` batches of each source task
   (length-grouped, 16 rows in micro-batches of 4, a LoRA adapter), as the fine-tunes train.

It prints the tokens each way runs, the seconds, the ratio, and how far sharing moves the
numbers (bf16 rounding: the same function on a different split of the work).

    .venv/bin/python benchmarks/shared_prefix.py [--repeats 2] [--steps 4]

A script: it prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

RECIPE = "recipes/experiment_smollm2.yaml"


def _switch(shared: bool) -> None:
    from sts_lightning.monitor import teacher_forcing

    teacher_forcing.MIN_SHARED_PREFIX = 8 if shared else 1 << 30


def _held_out(job, model, tok):
    """``run() -> answer NLL per item`` of the recipe's held-out pass, and its padded tokens."""
    from sts_lightning.data.choice_format import encode_choices
    from sts_lightning.experiment.heldout import choice_sets
    from sts_lightning.experiment.inputs import domain_halves
    from sts_lightning.model.run_inputs import resolve_pad_id
    from sts_lightning.monitor.answer_scores import score_choices

    _, heldout = domain_halves(job)
    sets = choice_sets(job, heldout, 0)
    encoded = {
        n: encode_choices(tok, items, text_format="chat", max_length=job.evaluation.max_length)
        for n, items in sets.items()
    }
    kw = dict(layer=job.predict.layer, pad_token_id=resolve_pad_id(tok), item_nll=False)
    kw |= dict(exclude_token_ids=sorted(set(tok.all_special_ids)))

    def run() -> torch.Tensor:
        out = score_choices(model, encoded, **kw, batch_size=job.evaluation.batch_size)
        return torch.cat([out[n].answer_nll for n in encoded])

    return run


def _sft_steps(job, tok, steps: int):
    """``run() -> losses`` of forward and backward over each task's first ``steps`` batches."""
    from sts_lightning.experiment.run import _task_inputs
    from sts_lightning.model.loading import load_model_and_tokenizer
    from sts_lightning.training.base import prepare_model
    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.training.sft import answer_nll, split_rows

    ft = job.finetune
    model, _ = load_model_and_tokenizer(job.model, dtype="float32", cache_dir=job.cache_dir)
    model = prepare_model(model, lora=ft.lora).train()
    batches = []
    for _, (_, pool) in _task_inputs(job)[0].items():
        data = SFTDataModule(
            list(pool), train_size=steps * ft.batch_size, batch_size=ft.batch_size, seed=0,
            max_length=ft.max_length, group_by_length=True, tokenizer=tok,
        )  # fmt: skip
        data.setup("fit")
        batches += [b for _, b in zip(range(steps), data.train_dataloader(), strict=False)]

    def run() -> torch.Tensor:
        losses = []
        for batch in batches:
            inputs = (batch["input_ids"], batch["attention_mask"], batch["labels"], None)
            for part in split_rows(inputs, ft.micro_batch_size):
                nll, n = answer_nll(model, *part)
                (nll / n).backward()
                losses.append(float(nll / n))
            model.zero_grad(set_to_none=True)
        return torch.tensor(losses)

    return run


def _compare(name: str, run, repeats: int) -> None:
    times = {True: [], False: []}
    values = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for shared in (True, False):  # warm-up: kernels of every shape compiled
            _switch(shared)
            run()
        for _ in range(repeats):
            for shared in (True, False):
                _switch(shared)
                start = time.perf_counter()
                values[shared] = run()
                times[shared].append(time.perf_counter() - start)
    plain, shared = statistics.median(times[False]), statistics.median(times[True])
    diff = (values[True] - values[False]).abs()
    scale = values[False].abs().mean()
    print(
        f"{name}: every row whole {plain:.1f} s, prefix shared {shared:.1f} s, "
        f"ratio {plain / shared:.2f}x; |change| mean {float(diff.mean() / scale):.2%}, "
        f"max {float(diff.max() / scale):.2%} of the mean value"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="SFT batches per task")
    args = parser.parse_args()
    torch.manual_seed(0)
    from sts_lightning.cli.experiment import load_experiment
    from sts_lightning.model.loading import load_model_and_tokenizer

    job = load_experiment(RECIPE)
    model, tok = load_model_and_tokenizer(job.model, dtype="float32", cache_dir=job.cache_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast")
    _compare("held-out pass (answer NLL per item)", _held_out(job, model, tok), args.repeats)
    del model
    _compare(f"SFT steps ({args.steps} per task, loss)", _sft_steps(job, tok, args.steps), 1)
    _switch(True)


if __name__ == "__main__":
    main()

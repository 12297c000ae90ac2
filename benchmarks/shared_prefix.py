"""Benchmark: a shared prompt prefix run once per batch against every row run whole, side by side.

Rows through a chat template begin alike (SmolLM2's system prompt and turn header: 24 tokens);
:func:`~sts_lightning.monitor.teacher_forcing.scored_logits` runs that prefix once and the rest
of every row on its key-value cache in scoring passes. The README experiment's answers-only
held-out pass (every skill's held-out items, layer-12 rows kept, as each fine-tuned model is
measured; ``recipes/experiment_smollm2.yaml``) on SmolLM2-135M-Instruct under bf16 autocast,
timed with the prefix shared and with it switched off (``MIN_SHARED_PREFIX`` set out of
reach), alternating so that machine load hits both alike. It prints the seconds, the ratio and
how far sharing moves each item's answer NLL (bf16 rounding: the same function on a different
split of the work).

Training runs every row whole. Measured with the prefix shared in SFT steps too (its backward
through the cache): the README run's fine-tunes took 338 s against 341 s, and the run's peak
rose from 2.9 to 3.05 GiB (prefixes of varying lengths: new bf16 kernel shapes).

    .venv/bin/python benchmarks/shared_prefix.py [--repeats 2]

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
    args = parser.parse_args()
    torch.manual_seed(0)
    from sts_lightning.cli.experiment import load_experiment
    from sts_lightning.model.loading import load_model_and_tokenizer

    job = load_experiment(RECIPE)
    model, tok = load_model_and_tokenizer(job.model, dtype="float32", cache_dir=job.cache_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 autocast")
    _compare("held-out pass (answer NLL per item)", _held_out(job, model, tok), args.repeats)
    _switch(True)


if __name__ == "__main__":
    main()

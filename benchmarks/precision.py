"""Benchmark: fp32 against bf16 autocast on this machine, side by side in one process.

Two workloads on SmolLM2-135M-Instruct, each timed in both precisions, alternating
(fp32, bf16, fp32, bf16, ...) so that machine load hits both alike; the median of the repeats
after a warm-up is reported with the ratio:

1. **scoring pass**: the experiment's held-out pass (option log-probs at the answer positions,
   layer-12 rows collected) over panel-skill items through the chat template;
2. **SFT step**: forward, backward and fused AdamW on a batch of chat examples (answer-only
   loss, tied embedding frozen), as ``SFTModule`` trains.

It also prints how far bf16 moves the numbers: the largest relative change of an item's summed
answer NLL and of a training loss. What :func:`~sts_lightning.model.precision.resolve_precision`
picks for ``auto`` here is printed first.

    .venv/bin/python benchmarks/precision.py [--items 8 --repeats 3 --batch 16]

A script: it prints.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

SKILLS = ("chain_sum", "products", "gcd", "letter_counting", "number_format", "knights_knaves")


def _scoring(model, tok, items: int):
    from sts_lightning.data.choice_format import encode_choices
    from sts_lightning.experiment.heldout import skill_items
    from sts_lightning.model.run_inputs import resolve_pad_id
    from sts_lightning.monitor.answer_scores import score_choices

    encode = functools.partial(encode_choices, tok, text_format="chat", max_length=384)
    sets = {s: encode(skill_items(s, items, 0)) for s in SKILLS}
    tokens = sum(len(e.sequences[0]) for v in sets.values() for e in v)
    kw = dict(layer=12, pad_token_id=resolve_pad_id(tok), batch_size=8)
    kw["exclude_token_ids"] = sorted(set(tok.all_special_ids))

    def run():
        out = score_choices(model, sets, **kw)
        return torch.cat([out[s].answer_nll for s in SKILLS])

    return run, tokens


def _sft_step(model, tok, batch: int):
    from sts_lightning.data.domains import load_training_set
    from sts_lightning.data.prompts import encode_example
    from sts_lightning.monitor.teacher_forcing import pad_batch, scored_logits

    examples = load_training_set("arithmetic", batch, seed=0)
    encoded = [encode_example(tok, e) for e in examples]
    ids, mask = pad_batch([e.input_ids for e in encoded], tok.pad_token_id)
    targets = torch.zeros_like(ids, dtype=torch.bool)
    for b, e in enumerate(encoded):
        start, end = e.span("answer")
        targets[b, start:end] = True
    predictors = torch.nn.functional.pad(targets[:, 1:], (0, 1), value=False)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied: frozen, as SFTModule
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-5, fused=True)
    model.train()

    def loss_of(precision: str):
        from sts_lightning.model.precision import autocast

        with autocast(precision, "cpu"):
            logits = scored_logits(model, ids, mask, predictors)
            return torch.nn.functional.cross_entropy(logits.float(), ids[targets])

    def run(precision: str):
        loss = loss_of(precision)
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return float(loss.detach())

    with torch.no_grad():  # the same weights in both precisions
        same = {p: float(loss_of(p)) for p in ("32-true", "bf16-mixed")}
    return run, int(mask.sum()), same


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    from sts_lightning.model.loading import load_model_and_tokenizer
    from sts_lightning.model.precision import autocast, native_bf16, resolve_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8, help="held-out items per skill")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="SFT examples per step")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: "
          f"{native_bf16('cpu')}; precision 'auto' resolves to "
          f"{resolve_precision('auto', 'cpu')!r}")  # fmt: skip

    model, tok = load_model_and_tokenizer("embedded:smollm2")
    score, tokens = _scoring(model, tok, args.items)
    times, nll = {"32-true": [], "bf16-mixed": []}, {}
    for i in range(args.repeats + 1):
        for precision in times:
            with autocast(precision, "cpu"):
                seconds, nll[precision] = _timed(score)
            if i:  # the first round warms up
                times[precision].append(seconds)
    fp32, bf16 = (statistics.median(times[p]) for p in times)
    change = ((nll["bf16-mixed"] - nll["32-true"]).abs() / nll["32-true"].abs()).max()
    print(f"scoring pass ({tokens} tokens): fp32 {tokens / fp32:.0f} tok/s, bf16 "
          f"{tokens / bf16:.0f} tok/s: {fp32 / bf16:.2f}x; largest relative change of an "
          f"item's answer NLL {float(change):.2%}")  # fmt: skip

    step, tokens, same = _sft_step(model, tok, args.batch)
    times = {"32-true": [], "bf16-mixed": []}
    for i in range(args.repeats + 1):
        for precision in times:
            seconds, _ = _timed(step, precision)
            if i:
                times[precision].append(seconds)
    fp32, bf16 = (statistics.median(times[p]) for p in times)
    gap = abs(same["bf16-mixed"] - same["32-true"]) / abs(same["32-true"])
    print(f"SFT step ({args.batch} examples, {tokens} tokens): fp32 {fp32:.2f} s, bf16 "
          f"{bf16:.2f} s: {fp32 / bf16:.2f}x; the loss on the same weights: fp32 "
          f"{same['32-true']:.4f}, bf16 {same['bf16-mixed']:.4f} ({gap:.2%} apart)")  # fmt: skip


if __name__ == "__main__":
    main()

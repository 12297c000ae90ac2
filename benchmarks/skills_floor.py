"""Benchmark: is the base model above floor on each skill of the panel?

For every skill in :data:`sts_lightning.data.skills.SKILLS` (or ``--skills``): ``--n`` held-out
items (seed 0) through the chat template: the answer NLL per answer token (teacher-forced, summed
over items and divided by their answer tokens) and how often the greedy completion contains the
oracle answer. A skill is at floor when no completion contains its answer and the answer NLL is at
least ``--nll_floor`` (generation runs only for a skill whose NLL is at least that bound).

    .venv/bin/python benchmarks/skills_floor.py [--n 8 --nll_floor 2.0 --model embedded:smollm2]

A script: it prints one JSON line per skill.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def answer_nll(model, tokenizer, examples) -> tuple[float, int]:
    """Summed answer NLL and answer tokens of ``examples`` (chat template, one item a pass)."""
    import torch

    from sts_lightning.data.prompts import encode_example

    total, tokens = 0.0, 0
    for ex in examples:
        enc = encode_example(tokenizer, ex)
        start, end = enc.span("answer")
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logp = model(ids).logits[0, start - 1 : end - 1].log_softmax(-1)  # (n_answer, V)
        total -= float(logp.gather(-1, ids[0, start:end, None]).sum())
        tokens += end - start
    return total, tokens


def contains_answer(completion: str, answer: str) -> bool:
    """The oracle answer appears in the completion as a whole (word-bounded, spaces collapsed):
    this model answers in sentences ("The final answer is 6."), so exact match of the whole
    completion would say 0 where it is right."""
    text, target = " ".join(completion.split()), " ".join(answer.split())
    return re.search(rf"(?<![\w.-]){re.escape(target)}(?![\w]|\.\d)", text) is not None


def greedy_match(model, tokenizer, examples, max_new_tokens: int) -> float:
    """Fraction of items whose greedy completion contains the answer (one left-padded batch)."""
    import torch

    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": ex.prompt}], add_generation_prompt=True, tokenize=False
        )
        for ex in examples
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    completions = tokenizer.batch_decode(
        out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
    )
    hits = [contains_answer(c, ex.answer) for c, ex in zip(completions, examples, strict=True)]
    return sum(hits) / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2")
    parser.add_argument("--skills", nargs="*", default=None)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--nll_floor", type=float, default=2.0)
    args = parser.parse_args()

    import torch

    from sts_lightning.data.skills import SKILLS, load_skill
    from sts_lightning.model.loading import load_model_and_tokenizer

    torch.set_num_threads(2)
    model, tokenizer = load_model_and_tokenizer(args.model)
    model.eval()
    for name in args.skills or list(SKILLS):
        start = time.perf_counter()
        examples = load_skill(name, args.n, "heldout", seed=0)
        nll, tokens = answer_nll(model, tokenizer, examples)
        per_token = nll / tokens
        hit = None  # a skill below the NLL bound is above floor whatever it generates
        if per_token >= args.nll_floor:
            longest = max(len(tokenizer(ex.answer)["input_ids"]) for ex in examples)
            hit = greedy_match(model, tokenizer, examples, min(longest + 12, 40))
        row = {
            "skill": name,
            "answer_nll": round(per_token, 3),
            "contains_answer": hit,
            "answer_tokens": tokens,
            "floor": hit == 0,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

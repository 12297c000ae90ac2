"""Throughput and memory of STS feature extraction on SmolLM2, side by side in one run.

Three ways to get per-latent statistics of the residual stream after layer L:

- ``full``: full forward with ``output_hidden_states=True`` (every layer + LM head), then
  SAE encode — what a straightforward implementation does.
- ``truncated``: forward stopped after layer L + SAE encode, rows discarded — the limit for any
  implementation that needs layer L.
- ``ours``: :func:`sts_lightning.model.capture.iter_span_activations` + encode + streaming
  :class:`~sts_lightning.stats.LatentMoments` (what the predictor runs).

Peak memory of ``ours`` is measured in fresh subprocesses at two token counts.

    python benchmarks/extraction.py [--tokens 4000] [--layer 12] [--memory-tokens 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time

import torch


def _setup(layer: int):
    from sae_lens import TopKSAE, TopKSAEConfig

    from sts_lightning.data.domains import load_domain
    from sts_lightning.data.prompts import encode_example
    from sts_lightning.model.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("embedded:smollm2")
    torch.manual_seed(0)
    # Throughput does not depend on what the SAE learned: a random TopK SAE of the default size.
    sae = TopKSAE(TopKSAEConfig(d_in=model.config.hidden_size, d_sae=4608, k=32)).eval()
    texts = [e for name in ("law", "philosophy", "health") for e in load_domain(name)]
    encoded = [encode_example(tok, e) for e in texts]
    return model, tok, sae, encoded


def _batches(encoded, n_tokens: int, batch_size: int = 8):
    """Sequences (and spans) until the spans hold ``n_tokens`` tokens."""
    seqs, spans, total = [], [], 0
    for e in encoded:
        s, t = e.span("all")
        seqs.append(e.input_ids)
        spans.append((s, t))
        total += t - s
        if total >= n_tokens:
            break
    return seqs, spans, total


def _run(mode: str, model, tok, sae, seqs, spans, layer: int) -> float:
    from sts_lightning.model.capture import iter_span_activations, residual_stream
    from sts_lightning.stats import LatentMoments

    start = time.perf_counter()
    if mode == "ours":
        stats = LatentMoments(sae.cfg.d_sae)
        for rows in iter_span_activations(
            model, seqs, spans, layer=layer, batch_size=8, pad_token_id=tok.pad_token_id
        ):
            with torch.inference_mode():
                stats.update(sae.encode(rows))
        stats.compute()
        return time.perf_counter() - start
    for first in range(0, len(seqs), 8):
        chunk, cspans = seqs[first : first + 8], spans[first : first + 8]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.inference_mode():
            if mode == "full":
                hidden = model(ids, attention_mask=mask, output_hidden_states=True)
                hidden = hidden.hidden_states[layer + 1]
            else:
                hidden = residual_stream(model, ids, mask, layer=layer)
            rows = torch.cat([hidden[i, s:t] for i, (s, t) in enumerate(cspans)])
            sae.encode(rows.float())
    return time.perf_counter() - start


def _memory_child(n_tokens: int, layer: int) -> dict:
    model, tok, sae, encoded = _setup(layer)
    # The same 64 sequences over and over: the transient peak of a batch depends on its longest
    # sequence, so only a repeated set isolates what grows with the token count.
    seqs, spans, total = _batches(encoded[:64] * (1 + n_tokens // 2000), n_tokens)
    base = _rss_mb()
    # Sample RSS during the run: ru_maxrss would report the model-loading peak instead.
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seconds = _run("ours", model, tok, sae, seqs, spans, layer)
    done.set()
    sampler.join()
    return {"tokens": total, "peak_extra_mb": peak[0] - base, "tok_s": total / seconds}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=4000)
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--memory-tokens", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_memory_child(args.child, args.layer)))
        return
    model, tok, sae, encoded = _setup(args.layer)
    seqs, spans, total = _batches(encoded, args.tokens)
    print(
        f"SmolLM2-135M fp32, layer {args.layer}, d_sae 4608, {total} tokens in {len(seqs)} "
        f"sequences, batch 8, {torch.get_num_threads()} threads"
    )
    _run("truncated", model, tok, sae, seqs[:8], spans[:8], args.layer)  # warm-up
    rates = {}
    for _ in range(2):  # interleaved repeats: machine noise hits every mode alike
        for mode in ("full", "truncated", "ours"):
            seconds = _run(mode, model, tok, sae, seqs, spans, args.layer)
            rates.setdefault(mode, []).append(total / seconds)
    best = {m: max(r) for m, r in rates.items()}
    for mode in ("full", "truncated", "ours"):
        print(
            f"  {mode:<10} {best[mode]:8.0f} tokens/s   ({best[mode] / best['truncated']:.2f}× "
            "truncated)"
        )
    print(f"  ours / full = {best['ours'] / best['full']:.2f}×")
    if args.memory_tokens:
        mem = []
        for n in args.memory_tokens:
            cmd = [sys.executable, __file__, "--layer", str(args.layer), "--child", str(n)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            mem.append(json.loads(out.strip().splitlines()[-1]))
            print(
                f"  ours at {mem[-1]['tokens']:>7} tokens: peak +{mem[-1]['peak_extra_mb']:.0f} MB"
                f" over the loaded model ({mem[-1]['tok_s']:.0f} tokens/s)"
            )
        print(
            f"  peak ratio {mem[-1]['tokens']} / {mem[0]['tokens']} tokens: "
            f"{mem[-1]['peak_extra_mb'] / mem[0]['peak_extra_mb']:.3f}"
        )


if __name__ == "__main__":
    main()

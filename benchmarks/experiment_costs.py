"""Two design choices of the experiment runner, measured side by side on SmolLM2.

1. **Held-out evaluation.** :func:`~sts_lightning.experiment.realised.item_losses` computes logits
   only where a token is scored (``logits_to_keep``) and reads the layer-L rows with a hook in
   the same pass, against the plain way: full logits plus ``output_hidden_states=True``. With
   every token scored (``span: all``, the default) it saves little (measured 1.02-1.08x); it matters
   for ``span: answer`` and large vocabularies.
2. **Domain statistics once.** They do not depend on the source task, so the runner computes
   them once for all (task, seed) runs instead of once per run, as calling ``predict`` per run
   would.

    python benchmarks/experiment_costs.py [--domains 6] [--tokens 384] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

from sts_lightning.data.domains import load_domain, load_training_set
from sts_lightning.experiment.cli import load_experiment
from sts_lightning.experiment.forecast import Forecaster
from sts_lightning.experiment.realised import item_losses
from sts_lightning.forecast.job import PredictJobConfig, resolve_sae
from sts_lightning.model.loading import load_model_and_tokenizer
from sts_lightning.monitor.evaluation import encode_eval_set

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "experiment_smollm2.yaml"
NAMES = ["math", "physics", "law", "history", "health", "code", "biology", "economics"]


@torch.no_grad()
def plain_losses(model, encoded, layer: int, pad: int, batch_size: int = 8):
    """Full logits and every hidden state, then select: what the simple code would do."""
    out = {}
    for name, items in encoded.items():
        nll = []
        for first in range(0, len(items), batch_size):
            batch = items[first : first + batch_size]
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), pad)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(batch):
                ids[i, : len(e.input_ids)], mask[i, : len(e.input_ids)] = (
                    torch.tensor(e.input_ids),
                    1,
                )
            res = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            logp = TF.log_softmax(res.logits.float(), -1)
            _ = res.hidden_states[layer + 1]
            for i, e in enumerate(batch):
                s, t = e.span("all")
                s = max(s, 1)
                nll.append(-logp[i, s - 1 : t - 1].gather(1, ids[i, s:t, None]).sum())
        out[name] = torch.stack(nll)
    return out


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runs", type=int, default=6, help="(task, seed) runs sharing domains")
    args = parser.parse_args()
    # The README run's settings, hence its cached SAE.
    job = load_experiment(RECIPE)
    model, tok = load_model_and_tokenizer(job.model)
    names = NAMES[: args.domains]
    enc = {n: encode_eval_set(tok, load_domain(n, split="heldout"), args.tokens) for n in names}
    n_tok = sum(len(e.input_ids) for v in enc.values() for e in v)
    ours = _best(lambda: item_losses(model, enc, layer=12, pad_token_id=tok.pad_token_id), 2)
    plain = _best(lambda: plain_losses(model, enc, 12, tok.pad_token_id), args.repeats)
    print(f"held-out pass, {len(names)} domains, {n_tok} tokens:")
    print(f"  plain (full logits + all hidden states) {plain:6.2f} s")
    print(f"  item_losses (scored logits + one hook)  {ours:6.2f} s   ratio {plain / ours:.2f}x")

    predict_job = PredictJobConfig(
        predict=job.predict, sae_training=job.sae_training, sae_tokens=job.sae_tokens
    )
    sae = resolve_sae(predict_job, model, tok)
    forecaster = Forecaster(model, tok, sae, 12, job.predict)
    scored = {n: load_domain(n, split="score") for n in names}
    pool = load_training_set("arithmetic", 512, seed=0)
    t = time.perf_counter()
    forecaster.domains(scored, seed=0)
    domains = time.perf_counter() - t
    t = time.perf_counter()
    forecaster.task(pool, seed=0)
    task = time.perf_counter() - t
    once = domains + args.runs * task
    per_run = args.runs * (domains + task)
    print(f"forecasts for {args.runs} runs: domain pass {domains:.1f} s, task pass {task:.1f} s")
    print(f"  domains per run {per_run:6.1f} s; once {once:6.1f} s; ratio {per_run / once:.2f}x")


if __name__ == "__main__":
    main()

"""Comparing N training sets in one run vs N single ``predict`` runs, side by side on SmolLM2.

:func:`~sts_lightning.forecast.compare.predict_many` computes the domain statistics once and
runs only the task pass per set (plus per-item sums for the bootstrap), so N sets should cost
about one run plus a task pass per extra set. Target: N sets ≤ (1 + 0.5·(N − 1)) × one run.
The embedded model and the cached SAE of ``recipes/predict_compare_smollm2.yaml``.

    python benchmarks/compare_sets.py [--train_tokens 1000] [--domain_tokens 500] [--domains 6]
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import replace
from pathlib import Path

from sts_lightning.data.domains import load_training_set
from sts_lightning.forecast.compare import predict_many
from sts_lightning.forecast.job import load_inputs, load_job
from sts_lightning.forecast.predict import predict
from sts_lightning.forecast.ranking import rank_sets

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "predict_compare_smollm2.yaml"
SETS = [("arithmetic", 0), ("family", 0), ("syllogism", 0), ("arithmetic", 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_tokens", type=int, default=1000)
    parser.add_argument("--domain_tokens", type=int, default=500)
    parser.add_argument("--domains", type=int, default=6)
    args = parser.parse_args()
    job = load_job(RECIPE)
    names = job.domains[: args.domains]
    job = replace(job, domains=names, protected=[d for d in job.protected if d in names])
    cfg = replace(
        job.predict,
        train_tokens=args.train_tokens,
        domain_tokens=args.domain_tokens,
        progress=False,
    )
    model, tokenizer, sae, domains, _ = load_inputs(job)
    sets = {f"{n}/{s}": load_training_set(n, 256, seed=s) for n, s in SETS}
    warnings.simplefilter("ignore")  # short domains are fine here
    predict(model, tokenizer, sae, sets["arithmetic/0"], domains, cfg)  # warm-up
    print(f"{len(domains)} domains × {args.domain_tokens} tokens, {args.train_tokens} train tokens")
    print("N  N singles  one run  ratio  cost/one  target | in-run: N×domains+sets  ratio")
    for n in (1, 2, 4):  # each N's singles right after its run: the same machine load
        chosen = dict(list(sets.items())[:n])
        t = time.perf_counter()
        cmp = predict_many(model, tokenizer, sae, chosen, domains, cfg)
        many = time.perf_counter() - t
        single = {}
        for name, examples in chosen.items():
            t = time.perf_counter()
            predict(model, tokenizer, sae, examples, domains, cfg)
            single[name] = time.perf_counter() - t
        singles, one = sum(single.values()), sum(single.values()) / n
        passes = sum(v for k, v in cmp.timings.items() if k.startswith("set/"))
        modelled = n * cmp.timings["domains"] + passes  # N single runs, from this run's parts
        inside = cmp.timings["domains"] + passes
        target = 1 + 0.5 * (n - 1)
        print(
            f"{n:<3}{singles:>8.1f}s{many:>8.1f}s{singles / many:>6.2f}x{many / one:>9.2f}"
            f"{target:>8.2f} | {modelled:>8.1f}s vs {inside:.1f}s {modelled / inside:>5.2f}x",
            flush=True,
        )
    t = time.perf_counter()
    rank_sets(cmp, job.target, job.protected, n_bootstrap=1000)
    print(f"ranking of 4 sets, 1000 bootstrap resamples each: {time.perf_counter() - t:.2f} s")
    passes = [round(v, 1) for k, v in cmp.timings.items() if k.startswith("set/")]
    print(f"per-set task pass {passes} s, domains once {cmp.timings['domains']:.1f} s")


if __name__ == "__main__":
    main()

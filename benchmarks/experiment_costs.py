"""Where the experiment runner spends time and memory, measured on SmolLM2 in one invocation.

1. **Stages.** A small ``sts-lightning experiment`` (2 tasks x 2 seeds, short fine-tunes): the
   time and the peak resident size of each stage (the kernel's high-water mark, reset at every
   stage boundary).
2. **Fine-tuning runs.** The resident size after each of the 4 runs: flat when nothing of a run
   outlives it and its freed pages go back to the system
   (:mod:`~sts_lightning.experiment.memory`); ``--gc-only`` shows the same runs with a plain
   ``gc.collect()`` in their place, side by side.
3. **Extraction.** The forecast's pass over 10k and 100k domain tokens (the recipe's settings,
   arithmetic problems as the domain: no built-in domain has 100k tokens), each in a fresh
   process: its peak above the loaded model. Read at ``--layer 1`` by default (the cost grows
   with the layer, the memory pattern does not); ``--layer 12`` is the recipe's.

Every configuration runs in its own subprocess. Measured on 2 shared CPU cores (load ~6):
~17 min for the experiment (its held-out evaluation stage ~10), ~3 and ~12 min for the two
extractions; ``--tokens 5000 50000`` gives the same ratio sooner.

    python benchmarks/experiment_costs.py [--layer 1] [--tokens 10000 100000] [--gc-only]
        [--steps 2] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "experiment_mmlu_smollm2.yaml"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    """Peak resident size since the last :func:`_reset_peak` (``VmHWM``)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the high-water mark (Linux)
        f.write("5")


# What the runner did before bf16 autocast, length-grouped batches and answers-only fine-tuned
# passes (``--before-after``).
BEFORE = (
    *("--finetune.precision", "32-true", "--evaluation.precision", "32-true"),
    *("--finetune.group_by_length", "false", "--evaluation.item_nll", "true"),
)


def _experiment(args, variant: str = "released") -> dict:
    """Run a small experiment; record each stage's peak and the resident size after each run."""
    import sts_lightning.experiment.run as run
    from sts_lightning.cli.experiment import load_experiment

    if args.gc_only:  # what the runner did before: collect, keep the pages
        import gc

        run.release_memory = gc.collect
        import sts_lightning.experiment.finetune as finetune

        finetune.release_memory = lambda: None
    peaks, after_run = {}, []
    stage_call = run._Stages.__call__

    def staged(self, what: str, key: str | None = None) -> None:
        stage_call(self, what, key)
        if key is not None:
            peaks[key] = max(peaks.get(key, 0.0), _peak_mb())
        if what.startswith("realised change measured"):
            after_run.append(_rss_mb())
        _reset_peak()

    run._Stages.__call__ = staged
    with tempfile.TemporaryDirectory() as out:
        job = load_experiment(
            RECIPE,
            *("--domains", "[math, law, code]", "--seeds", "[0, 1]", "--wandb", "false"),
            *("--tasks", "[arithmetic, family]", "--task_examples", "128"),
            *("--finetune.steps", str(args.steps), "--finetune.batch_size", str(args.batch_size)),
            *("--finetune.warmup_steps", "0", "--finetune.track_every", str(args.steps)),
            *("--finetune.max_length", "128", "--predict.train_tokens", "200"),
            *("--predict.domain_tokens", "200", "--evaluation.items_per_domain", "8"),
            *("--evaluation.task_items", "4", "--n_bootstrap", "50", "--output_dir", out),
            *(BEFORE if variant == "before" else ()),
            *(_REAL if args.real_tasks else ()),
        )
        _reset_peak()
        results = run.run_experiment(job)
    return {"timings": results["timings"], "peaks": peaks, "after_run": after_run}


# ``--real-tasks``: the README run's three tasks at its batch shape and lengths.
_REAL = (
    *("--tasks", "[arithmetic, family, mmlu_qa]", "--task_examples", "512"),
    *("--finetune.max_length", "512", "--finetune.batch_size", "8"),
    *("--finetune.accumulate", "4", "--evaluation.items_per_domain", "16"),
    *("--evaluation.task_items", "16", "--evaluation.max_length", "384"),
)


def _extraction(args, n_tokens: int) -> dict:
    """Peak resident size of one domain pass over ``n_tokens`` tokens, above the loaded model."""
    from sts_lightning.cli.experiment import load_experiment
    from sts_lightning.data.domains import load_training_set
    from sts_lightning.experiment.forecast import Forecaster
    from sts_lightning.experiment.memory import release_memory
    from sts_lightning.model.loading import default_cache_dir, load_model_and_tokenizer
    from sts_lightning.model.sae_source import resolve_run_sae

    job = load_experiment(RECIPE)
    model, tokenizer = load_model_and_tokenizer(job.model)
    sae = resolve_run_sae(job, model, tokenizer, default_cache_dir())  # the recipe's cached SAE
    config = replace(job.predict, layer=args.layer, domain_tokens=n_tokens)
    forecaster = Forecaster(model, tokenizer, sae, args.layer, config)
    pool = load_training_set("arithmetic", 2 + n_tokens // 20, seed=0)  # ~23 tokens each
    forecaster.domains({"warm-up": pool[:32]}, seed=0)  # threshold, lazy buffers, thread pools
    # Free heap left by loading would hide growth: return it, so what the pass holds shows.
    release_memory()
    base = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    stats = forecaster.domains({"arithmetic": pool}, seed=0)["arithmetic"]
    seconds = time.perf_counter() - start
    return {"peak_extra_mb": _peak_mb() - base, "seconds": seconds, **stats.counts}


def _child(args) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    kind, value = args.child
    out = _experiment(args, value) if kind == "experiment" else _extraction(args, int(value))
    print(json.dumps(out))


def _run(args, *child: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *child, "--layer", str(args.layer)]
    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    cmd += ["--gc-only"] if child[1] == "gc-only" else []
    cmd += ["--real-tasks"] if args.real_tasks else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    env["TOKENIZERS_PARALLELISM"] = "false"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(child)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print_stages(runs: dict[str, dict]) -> None:
    names = list(runs)
    print("stage               " + "".join(f"{n + ' s':>12}{n + ' peak MB':>18}" for n in names))
    first = runs[names[0]]
    for key in (k for k in first["timings"] if k != "peak_rss_mb"):
        cells = "".join(
            f"{r['timings'].get(key, float('nan')):12.1f}{r['peaks'].get(key, float('nan')):18.0f}"
            for r in runs.values()
        )
        print(f"{key:<20}{cells}")
    print("\nresident size after each fine-tuning run (MB; ratio to run 1)")
    for i in range(len(first["after_run"])):
        cells = "".join(
            f"{r['after_run'][i]:12.0f}{r['after_run'][i] / r['after_run'][0]:18.3f}"
            for r in runs.values()
        )
        print(f"run {i + 1:<16}{cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=1, help="layer read by the extraction")
    parser.add_argument("--tokens", type=int, nargs=2, default=[10_000, 100_000])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per fine-tune")
    parser.add_argument("--batch-size", type=int, default=2, help="examples per step")
    parser.add_argument("--gc-only", action="store_true", help="also run without memory release")
    parser.add_argument(
        "--before-after",
        action="store_true",
        help="also run as before bf16 autocast, length grouping and answers-only passes",
    )
    parser.add_argument(
        "--real-tasks", action="store_true", help="the README run's tasks and batch shape"
    )
    parser.add_argument("--no-extraction", action="store_true", help="skip part 3")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    runs = {}
    if args.before_after:  # first, so machine load drifts against the new settings
        runs["before"] = _run(args, "experiment", "before")
    runs["released" if not args.before_after else "after"] = _run(args, "experiment", "released")
    if args.gc_only:
        runs["gc-only"] = _run(args, "experiment", "gc-only")
    _print_stages(runs)
    if args.before_after:
        before, after = runs["before"]["timings"], runs["after"]["timings"]
        print("\nspeed-up after / before (seconds ratio before ÷ after)")
        for key in before:
            if key != "peak_rss_mb" and after.get(key, 0) > 0:
                print(f"  {key:<20}{before[key] / after[key]:8.2f}×")
    if args.no_extraction:
        return
    lo, hi = (_run(args, "extract", str(n)) for n in args.tokens)
    print(f"\nextraction (domain pass, layer {args.layer}): peak above the loaded model")
    for n, r in zip(args.tokens, (lo, hi), strict=True):
        print(
            f"  {n:>7,} tokens ({r['n_tokens']:,} rows): {r['peak_extra_mb']:7.1f} MB, "
            f"{r['seconds']:6.1f} s"
        )
    ratio = hi["peak_extra_mb"] / lo["peak_extra_mb"]
    print(f"  peak at {args.tokens[1]:,} / {args.tokens[0]:,} tokens = {ratio:.3f}")


if __name__ == "__main__":
    main()

"""``sts-lightning experiment``: the whole crystal-ball loop, for several source tasks and seeds.

In order (each stage printed with the elapsed time):

1. load the model and the SAE (shipped with the package, or trained and cached on first use);
2. domain statistics on each domain's "score" half (once: they do not depend on the task);
3. the base model's pass over held-out choice items of each domain's "heldout" half (option
   log-probs, item NLL and layer-L rows per item; :mod:`~sts_lightning.experiment.heldout`)
   and its answer NLL and exact match on held-out problems of each source task
   (:mod:`~sts_lightning.experiment.task_probe`);
4. per (task, seed), all before the first fine-tune: the forecast (every STS mode, contrast,
   raw baseline, similarity controls, the first-order control); the base model is then let go;
5. per (task, seed): fine-tuning with the STS callback tracking the realised shift, and the
   fine-tuned model's pass over the same held-out items and problems (was the task learned?
   :mod:`~sts_lightning.experiment.task_learning`);
6. :mod:`~sts_lightning.experiment.summary` and :mod:`~sts_lightning.experiment.report`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sts_lightning import functional as F
from sts_lightning.data.prompts import Example
from sts_lightning.experiment.config import ExperimentConfig
from sts_lightning.experiment.forecast import (
    Forecaster,
    contrast_shift,
    score_domains,
    to_prediction,
)
from sts_lightning.experiment.heldout import Evaluation
from sts_lightning.experiment.memory import peak_rss_mb, release_memory, rss_mb
from sts_lightning.experiment.task_probe import TaskLearning, split_stop_items, split_task_items
from sts_lightning.forecast.modes import MODES
from sts_lightning.model.device import resolve_device
from sts_lightning.model.precision import resolve_precision

__all__ = ["run_experiment"]

log = logging.getLogger(__name__)


class _Stages:
    """The run's progress display: one line per stage on stderr.

    Each line gives the stages done, the time elapsed, the stage's own time, an estimate of
    the time left (the mean time of each remaining stage's kind so far; no estimate until every
    remaining kind has run once; the last stage, the report, counts as instant until then) and
    the resident memory, now and at its peak.

    Args:
        plan: The ``key`` of every stage to come, in order.
    """

    def __init__(self, plan: list[str]) -> None:
        self.plan, self.done, self.start = list(plan), 0, time.perf_counter()
        self.timings: dict[str, float] = {}
        self.durations: dict[str, list[float]] = {}
        self._t = self._stage_start = self.start

    @property
    def total(self) -> int:
        return len(self.plan)

    def left(self) -> float | None:
        """Estimated seconds for the stages not yet done; ``None`` while a kind is unseen."""
        rest = self.plan[self.done :]
        if rest and rest[-1] not in self.durations:
            rest = rest[:-1]  # the final stage (the report) takes seconds
        if any(key not in self.durations for key in rest):
            return None
        return sum(sum(self.durations[k]) / len(self.durations[k]) for k in rest)

    def __call__(self, what: str, key: str | None = None) -> None:
        now = time.perf_counter()
        if key is not None:
            self.timings[key] = self.timings.get(key, 0.0) + now - self._t
        self._t = now
        if not what:
            return
        took, self._stage_start = now - self._stage_start, now
        if key is not None:
            self.durations.setdefault(key, []).append(took)
        self.done += 1
        left = self.left() if self.done < self.total else 0.0
        eta = "" if left is None else f", ~{_clock(left)} left"
        rss = f"RSS {rss_mb() / 1024:.1f} GB, peak {peak_rss_mb() / 1024:.1f} GB"
        print(
            f"[{self.done}/{self.total} {_clock(now - self.start)} | {_clock(took)}{eta}] {what}"
            f" ({rss})",
            file=sys.stderr,
        )


def _clock(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour)."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _task_pool(job: ExperimentConfig, task: str) -> tuple[str, bool, list[Example]]:
    """``(name, is_builtin, examples)`` of a source task (:func:`~.inputs.task_pool`)."""
    from sts_lightning.experiment.inputs import task_pool

    return task_pool(job, task)


def _domains(job: ExperimentConfig) -> tuple[dict, dict]:
    """``(scored, heldout)`` halves of every domain (:func:`~.inputs.domain_halves`)."""
    from sts_lightning.experiment.inputs import domain_halves

    return domain_halves(job)


def _load(job: ExperimentConfig, device: torch.device, stage: _Stages) -> tuple[Any, Any, Any, int]:
    """The model, tokenizer and SAE on ``device``, checked against each other, and the layer.

    What needs no model is checked first (every task's name, file and columns; the domain
    files), so that a bad input is refused before a model loads or an SAE trains.
    """
    from sts_lightning.experiment.inputs import check_inputs
    from sts_lightning.model.capture import model_width
    from sts_lightning.model.loading import default_cache_dir, load_model_and_tokenizer
    from sts_lightning.model.run_inputs import check_k, resolve_sae_layer
    from sts_lightning.model.sae import sae_d_sae
    from sts_lightning.model.sae_source import resolve_run_sae

    check_inputs(job)  # tasks and domain files, before the model
    cache = Path(job.cache_dir) if job.cache_dir else default_cache_dir()
    model, tokenizer = load_model_and_tokenizer(
        job.model, dtype=job.dtype, trust_remote_code=job.trust_remote_code, cache_dir=cache
    )
    model.to(device)
    stage(f"model {job.model} loaded", "load_model")
    # The SAE trains where the model runs (its rows are collected there).
    on_device = replace(job, sae_training=replace(job.sae_training, device=str(device)))
    sae = resolve_run_sae(on_device, model, tokenizer, cache)  # shipped, cached or trained
    if isinstance(sae, torch.nn.Module):
        sae.to(device)
    layer = resolve_sae_layer(model, sae, job.predict.layer, "predict")
    check_k(job.predict.k, sae, "predict.k")
    d_model = model_width(model)
    if job.raw_k > d_model:
        raise ValueError(f"`raw_k`={job.raw_k} exceeds the model's width d_model={d_model}")
    stage(f"SAE ready (layer {layer}, d_sae {sae_d_sae(sae)})", "sae")
    return model, tokenizer, sae, layer


@dataclass
class _Shared:
    """What every (task, seed) run reuses: computed once, before the first fine-tune."""

    job: ExperimentConfig
    device: torch.device
    forecaster: Forecaster
    domain_stats: dict
    scored: dict
    evaluation: Evaluation
    contrast: list[Example] | None
    learning: TaskLearning
    """Held-out problems of each source task: was it learned? (answer NLL, exact match)"""
    halves: tuple[dict, dict] | None = None
    """Domain statistics on two disjoint halves of each domain's items (forecast reliability)."""
    first_order: Any = None
    """The first-order control's domain gradients (:class:`~.first_order.FirstOrderControl`),
    with ``first_order`` set; ``None`` without."""
    stopping: TaskLearning | None = None
    """Stop probes of each source task with the base model's values
    (``finetune.stop_when_learned``); ``None`` without."""

    def release_base_model(self) -> None:
        """Let the base model go once every forecast is made: each fine-tune loads its own
        copy, so its peak is its own (weights, gradients, optimizer state), not that plus the
        base model's weights. The first-order control's gradients hold it too."""
        self.forecaster.release_model()
        self.first_order = None
        release_memory()


def _final_shift(tracker, model, tokenizer, steps: int) -> torch.Tensor:
    """Δ_real after ``steps`` steps: the callback's measurement at the last step when it has one.

    Re-measured only when the last measurement is missing or older (e.g. it failed).
    """
    last = tracker.history[-1]["step"] if tracker.history else None
    if tracker.last_shift is not None and last == steps:
        return tracker.last_shift
    return tracker.realised_shift(model, tokenizer)


def _learned_stop(ctx: _Shared, task: str) -> list:
    """``[LearnedStop]`` on ``task``'s stop probe with ``finetune.stop_when_learned``, else
    ``[]``."""
    from sts_lightning.experiment.learned_stop import LearnedStop

    ft, stopping = ctx.job.finetune, ctx.stopping
    if stopping is None or not stopping.probes[task].examples:
        return []
    measure = lambda model, tokenizer: stopping.run(model, tokenizer, task)  # noqa: E731
    return [LearnedStop(measure, stopping.base[task], ft.learned_margin, ft.check_every)]


def _forecast(ctx: _Shared, pool, seed: int, tag: str):
    """Every forecast of one (task, seed): ``(task features, scores, score halves,
    prediction)``; the first-order control's scores join STS's."""
    job, k = ctx.job, ctx.job.predict.k
    tf = ctx.forecaster.task(pool, seed, ctx.contrast, desc=f"forecast {tag}")
    scores = score_domains(ctx.domain_stats, tf, k, job.raw_k)
    halves = [score_domains(h, tf, k, job.raw_k) for h in ctx.halves or ()]
    if ctx.first_order is not None:  # the gradient control, its halves beside STS's
        fo_scores, fo_halves = ctx.first_order.task(pool, seed)
        for domain, row in fo_scores.items():
            scores[domain].update(row)
        for half, key in zip(halves, "ab", strict=False):
            for domain, row in fo_halves.get(key, {}).items():
                half[domain].update(row)
    prediction = to_prediction(
        ctx.domain_stats, tf, layer=ctx.forecaster.layer, k=k,
        max_norm=float(ctx.forecaster.max_norm), config=job.predict,
    )  # fmt: skip
    return tf, scores, halves, prediction


def _fit(ctx: _Shared, name: str, builtin: bool, pool, seed: int, prediction):
    """Fine-tune one (task, seed) within its step budget: ``(model, tokenizer, tracker, steps,
    budget, stop checks)``."""
    from sts_lightning.experiment.finetune import finetune

    job = ctx.job
    run_dir = Path(job.output_dir) / "runs" / f"{name}-seed{seed}"
    budget = job.finetune.steps_for(name)
    run_job = replace(job, finetune=replace(job.finetune, steps=budget, task_steps={}))
    stop = _learned_stop(ctx, name)
    sae = ctx.forecaster.sae
    model, tokenizer, tracker = finetune(
        run_job, name, builtin, pool, seed, sae, prediction, ctx.scored, run_dir, stop
    )
    steps = budget if not stop or stop[0].stopped_at is None else stop[0].stopped_at
    checks = [list(c) for c in stop[0].checks] if stop else []
    model.to(ctx.device)  # Lightning hands the module back on the CPU after fit
    return model, tokenizer, tracker, steps, budget, checks


def _one_run(ctx: _Shared, name: str, builtin: bool, pool, seed: int, forecast, stage) -> dict:
    """Fine-tune and measure one (task, seed) given its ``forecast`` (:func:`_forecast`);
    returns its record for the summary."""
    job, tag, k, sae = ctx.job, f"{name} seed {seed}", ctx.job.predict.k, ctx.forecaster.sae
    tf, scores, halves, prediction = forecast
    model, tokenizer, tracker, steps, budget, checks = _fit(
        ctx, name, builtin, pool, seed, prediction
    )
    how = f"{job.finetune.method}, {steps} of {budget} steps"
    stage(f"fine-tuned {tag} ({how}{', learned early' if steps < budget else ''})", "finetune")

    realised = ctx.evaluation.realised(model, sae, float(ctx.forecaster.max_norm), seed)
    real_top = F.top_shifted(_final_shift(tracker, model, tokenizer, steps), k)
    act = MODES["act"]
    for domain, row in realised.items():  # the paper's "actual shifted dimensions" variant
        row["realised_sts"] = float(act.combine(prediction.domain_means[domain][real_top]))
    overlap = {"icl": float(F.overlap_at_k(prediction.top_latents, real_top))}
    if tf.contrast is not None:
        overlap["contrast"] = float(F.overlap_at_k(F.top_shifted(contrast_shift(tf), k), real_top))
    learning = ctx.learning.judge(model, tokenizer, name)  # held-out task problems
    record = {
        "task": name,
        "seed": seed,
        "scores": scores,
        "realised": realised,
        "overlap": overlap,
        "task_learning": learning,
        "task_accuracy": {k: learning[f"exact_match_{k}"] for k in ("before", "after")},
        "history": tracker.history,
        "steps": steps,
        "step_budget": budget,
        "stop_checks": checks,
        "sae_quality": tf.stats.sae_quality(),
        "train_counts": tf.stats.counts,
    }
    if halves:
        record["score_halves"] = {"a": halves[0], "b": halves[1]}
    del model, tracker
    release_memory()  # one fine-tuned copy at a time, its pages given back
    stage(f"realised change measured for {tag}", "evaluation")
    return record


def _task_inputs(job: ExperimentConfig) -> tuple[dict, dict, dict]:
    """``(pools, problems, stops)``: each task's training pool (and whether it is built in),
    its judged held-out problems and, with ``stop_when_learned``, its stop probe (each with
    the task's checker)."""
    from sts_lightning.experiment.finetune import task_reward

    pools, problems, stops = {}, {}, {}
    ft = job.finetune
    for name, builtin, examples in (_task_pool(job, t) for t in job.tasks):
        pool, held = split_task_items(name, builtin, examples, job.evaluation.task_items)
        reward = task_reward(name if builtin else None)
        if ft.stop_when_learned:
            pool, stop_items = split_stop_items(name, builtin, pool, held, ft.stop_items)
            stops[name] = (stop_items, reward)
        pools[name] = (builtin, pool)
        problems[name] = (held, reward)
    return pools, problems, stops


def _plan(job: ExperimentConfig) -> list[str]:
    """The stage keys of a run, in order (the progress display's plan)."""
    n_runs = len(job.tasks) * len(job.seeds)
    shared = ["load_model", "sae", "domain_statistics"]
    shared += ["first_order"] if job.first_order is not None else []
    per_run = ["finetune", "evaluation"] * n_runs
    return [*shared, "evaluation", *["forecast"] * n_runs, *per_run, "report"]


def _shared(job, device, model, tokenizer, sae, layer, stage: _Stages) -> tuple[_Shared, dict]:
    """Everything computed once before the first fine-tune, and the task pools."""
    scored, heldout = _domains(job)
    pools, problems, stops = _task_inputs(job)
    contrast = None if job.contrast_task is None else _task_pool(job, job.contrast_task)[2][:512]
    forecaster = Forecaster(model, tokenizer, sae, layer, job.predict)
    # Once (task-independent), as two disjoint item halves merged: the halves give reliability.
    domain_stats, *halves = forecaster.domain_halves(scored, seed=job.predict.seed)
    stage(f"domain statistics ({len(scored)} domains)", "domain_statistics")
    first_order = None
    if job.first_order is not None:
        from sts_lightning.experiment.first_order import FirstOrderControl

        control = FirstOrderControl(model, tokenizer, job.first_order, job.finetune.lr)
        first_order = control.domains(scored)
        stage(f"first-order control: gradients of {len(scored)} domains", "first_order")
    # The task problems are measured by TaskLearning (answer NLL and exact match, per item).
    evaluation = Evaluation.measure(model, tokenizer, job, layer, heldout, {})
    margin, batch = job.finetune.learned_margin, job.evaluation.batch_size
    precision = resolve_precision(job.evaluation.precision, device, "evaluation.precision")
    learning = TaskLearning.measure(model, tokenizer, problems, margin, batch, precision)
    stopping = TaskLearning.measure(model, tokenizer, stops, margin, batch, precision)
    stage("base model evaluated on the held-out items", "evaluation")
    ctx = _Shared(job, device, forecaster, domain_stats, scored, evaluation, contrast, learning)
    ctx.halves = None if halves[0] is None else tuple(halves)
    ctx.stopping = stopping if stops else None
    ctx.first_order = first_order
    return ctx, pools


def run_experiment(job: ExperimentConfig) -> dict[str, Any]:
    """Run the experiment the job describes, write its report, return the results dict."""
    from sts_lightning.experiment.report import write_report
    from sts_lightning.experiment.summary import summarise_runs

    stage = _Stages(_plan(job))
    device = resolve_device(job.device)  # a bad device fails before anything loads
    model, tokenizer, sae, layer = _load(job, device, stage)
    ctx, pools = _shared(job, device, model, tokenizer, sae, layer, stage)
    del model
    order = [
        (name, builtin, pool, seed) for name, (builtin, pool) in pools.items() for seed in job.seeds
    ]
    forecasts = []
    for name, _, pool, seed in order:  # every forecast first: they are what needs the base model
        forecasts.append(_forecast(ctx, pool, seed, f"{name} seed {seed}"))
        stage(f"forecast {name} seed {seed}", "forecast")
    ctx.release_base_model()
    runs = [
        _one_run(ctx, name, builtin, pool, seed, forecast, stage)
        for (name, builtin, pool, seed), forecast in zip(order, forecasts, strict=True)
    ]
    d_sae = ctx.forecaster.extractor.d_sae
    results = summarise_runs(
        runs, k=job.predict.k, d_sae=d_sae, n_bootstrap=job.n_bootstrap,
        target_reliability=job.evaluation.target_reliability, labels=job.labels(),
    )  # fmt: skip
    results["config"] = asdict(job)
    results["timings"] = dict(stage.timings)
    results["timings"]["total"] = time.perf_counter() - stage.start  # up to the report
    results["timings"]["peak_rss_mb"] = peak_rss_mb()
    results["domain_counts"] = {n: d.counts for n, d in ctx.domain_stats.items()}
    write_report(results, job.output_dir, wandb=job.wandb)
    stage(f"report written to {Path(job.output_dir) / 'report.md'}", "report")
    return results

"""``sts-lightning predict``: model + SAE + training data + domains → a saved forecast.

The job a recipe describes (``recipes/predict_*.yaml``). On the embedded default everything is
offline: SmolLM2-135M-Instruct rebuilt from its wheel, an SAE trained on its residual stream on
first use and cached, a reasoning-gym training set and MMLU / HumanEval domains from wheels.
Any HF model id or path and sae-lens id (``release/sae_id``) or SAE directory work the same way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sts_lightning.config import at_least, one_of, positive_int
from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.modes import MODES, RANK_MODES
from sts_lightning.forecast.prediction import Prediction
from sts_lightning.forecast.recipe import dataclass_parser, load_recipe
from sts_lightning.model.sae_training import SAETrainConfig

__all__ = [
    "PredictJobConfig",
    "job_parser",
    "load_domains",
    "load_inputs",
    "load_job",
    "load_train",
    "run_predict",
]


@dataclass
class PredictJobConfig:
    """A forecast run: what to load, what to score, where to write."""

    model: str = "embedded:smollm2"
    """HF model id, local checkpoint directory, or ``embedded:smollm2`` (offline default)."""
    dtype: str = "float32"
    """Dtype of the forward pass (``float32``, ``bfloat16``, ``float16``); the SAE runs in fp32."""
    device: str = "auto"
    """Where the model and the SAE run, and an SAE is trained (this overrides
    ``sae_training.device``): ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``,
    ``cuda:1``, …"""
    trust_remote_code: bool = False
    """Allow a hub model's own code to run. Off unless you trust the checkpoint."""
    sae: str | None = None
    """sae-lens id ``release/sae_id`` or a local sae-lens directory. ``None`` trains one on the
    model's residual stream at ``predict.layer`` on first use and caches it."""
    sae_training: SAETrainConfig = field(default_factory=SAETrainConfig)
    """How the SAE is trained when ``sae`` is ``None``."""
    sae_tokens: int = 150_000
    """Residual-stream rows collected to train the SAE (domain texts + training tasks)."""
    train_set: str = "arithmetic"
    """Built-in training set (``arithmetic``, ``family``, ``syllogism``) when ``train_file`` is
    not given."""
    train_file: str | None = None
    """JSON-lines file of ``{"prompt": ..., "answer": ...}`` training pairs (overrides
    ``train_set``)."""
    train_examples: int = 512
    """Training pairs drawn (the token budget in ``predict`` decides how many are used)."""
    domains: list[str] = field(default_factory=lambda: ["math", "physics", "law"])
    """Built-in domains (MMLU categories and ``code``), scored on their "score" half."""
    domain_files: dict[str, str] = field(default_factory=dict)
    """Extra domains: ``{name: JSON-lines file}`` of ``{"prompt": ..., "answer"?: ...}``."""
    output_dir: str = "runs/predict"
    """Where ``prediction.json``, ``prediction.safetensors``, ``table.txt`` and ``chart.png``
    are written."""
    cache_dir: str | None = None
    """Cache of the rebuilt embedded model and trained SAEs (default ``$STS_CACHE_DIR`` or
    ``~/.cache/sts_lightning``)."""
    predict: PredictConfig = field(default_factory=PredictConfig)
    """The forecast itself."""
    train_sets: dict[str, str] = field(default_factory=dict)
    """Compare candidate training sets instead of forecasting one: ``{name: source}``, a source
    being a built-in set (``train_examples`` drawn), a ``.jsonl`` file or a ``datasets`` source.
    Domain statistics are computed once for all sets (``sts_lightning.predict_many``)."""
    target: list[str] = field(default_factory=list)
    """With ``train_sets``: domains whose movement is wanted (they raise a set's rank)."""
    protected: list[str] = field(default_factory=list)
    """With ``train_sets``: domains whose movement is not wanted (they lower a set's rank)."""
    rank_mode: str = "act"
    """STS mode the sets are ranked on: one of :data:`~sts_lightning.forecast.modes.RANK_MODES`
    (``act``, ``icl``, ``notebook``)."""
    n_bootstrap: int = 1000
    """Bootstrap resamples of each set's training items for the intervals."""
    ci_level: float = 0.9
    """Coverage of the bootstrap intervals."""
    separation: float = 0.95
    """P(A beats B) below which two neighbouring sets are reported as a tie."""
    n_candidates: int = 1000
    """Latents (largest Δ first) whose per-item sums are kept for the bootstrap."""
    wandb: bool = False
    """Log the comparison table and chart to an offline W&B run under ``output_dir``."""

    def __post_init__(self) -> None:
        if not self.domains and not self.domain_files:
            raise ValueError("`domains` and `domain_files` are both empty: name at least one")
        positive_int("sae_tokens", self.sae_tokens)
        one_of("rank_mode", self.rank_mode, RANK_MODES)
        positive_int("n_bootstrap", self.n_bootstrap)
        positive_int("n_candidates", self.n_candidates)
        at_least("ci_level", self.ci_level, 0, strict=True)
        at_least("separation", self.separation, 0.5, strict=True)
        if self.ci_level >= 1 or self.separation >= 1:
            raise ValueError("`ci_level` and `separation` must be < 1")
        known = [*self.domains, *self.domain_files]
        for role in ("target", "protected"):
            unknown = [d for d in getattr(self, role) if d not in known]
            if unknown:
                raise ValueError(f"`{role}` names {unknown}, not among the domains {known}")
        if (self.target or self.protected) and not self.train_sets:
            raise ValueError("`target`/`protected` rank candidate `train_sets`: give them too")
        if self.train_sets and self.train_file:
            raise ValueError(
                "`train_file` and `train_sets` are both given: put the file in the sets"
            )
        if MODES[self.rank_mode].needs_icl and self.predict.domain_demos == 0:
            raise ValueError(f"`rank_mode`={self.rank_mode!r} needs `predict.domain_demos` > 0")


def job_parser():
    """The ``sts-lightning predict`` argument parser (recipes are its ``--config`` files)."""
    return dataclass_parser(
        PredictJobConfig,
        "sts-lightning predict",
        "Forecast per-domain transferability before fine-tuning (STS).",
        "a recipes/predict_*.yaml",
    )


def load_job(recipe: str | Path, *overrides: str) -> PredictJobConfig:
    """A :class:`PredictJobConfig` from a predict recipe (+ ``--key value`` overrides)."""
    return load_recipe(job_parser(), PredictJobConfig, recipe, *overrides)


def load_domains(job: PredictJobConfig) -> dict[str, list[Example]]:
    """The job's domains: each built-in one's "score" half, then each of ``domain_files``.

    Needs no model: :func:`load_inputs` and :func:`run_predict` call it before loading one, so
    an unknown domain or a bad file is refused in seconds.
    """
    from sts_lightning.data.domains import load_domain
    from sts_lightning.data.sources import read_examples

    domains = {name: load_domain(name, split="score") for name in job.domains}
    return domains | {name: read_examples(path) for name, path in job.domain_files.items()}


def load_train(job: PredictJobConfig) -> list[Example]:
    """The training pairs: ``train_file`` when given, else ``train_examples`` drawn from the
    built-in ``train_set`` (seed ``predict.seed``). Needs no model."""
    from sts_lightning.data.domains import load_training_set
    from sts_lightning.data.sources import read_examples

    if job.train_file:
        return read_examples(job.train_file)
    return load_training_set(job.train_set, job.train_examples, seed=job.predict.seed)


def load_inputs(job: PredictJobConfig) -> tuple[Any, Any, Any, dict, dict[str, float]]:
    """``(model, tokenizer, sae, domains, timings)`` the job names (``timings``: load_model,
    sae, and ``start``, the ``perf_counter`` when loading began).

    What needs no model is resolved first (the device, the domains), so that a bad setting
    fails before a model is loaded or an SAE trained.
    """
    import torch

    from sts_lightning.model.loading import default_cache_dir, load_model_and_tokenizer
    from sts_lightning.model.run_inputs import resolve_device
    from sts_lightning.model.sae_source import resolve_run_sae

    t0 = time.perf_counter()
    device = resolve_device(job.device)  # before any loading: a bad device fails at once
    domains = load_domains(job)
    cache = Path(job.cache_dir) if job.cache_dir else default_cache_dir()
    t_load = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(
        job.model, dtype=job.dtype, trust_remote_code=job.trust_remote_code, cache_dir=cache
    )
    model.to(device)
    t_model = time.perf_counter()
    on_device = replace(job, sae_training=replace(job.sae_training, device=str(device)))
    sae = resolve_run_sae(on_device, model, tokenizer, cache)  # shipped, cached or trained
    if isinstance(sae, torch.nn.Module):  # a loaded SAE starts on the CPU
        sae.to(device)
    timings = {"start": t0, "load_model": t_model - t_load, "sae": time.perf_counter() - t_model}
    return model, tokenizer, sae, domains, timings


def run_predict(job: PredictJobConfig) -> Prediction:
    """Load everything the job names, forecast, and write the outputs; returns the prediction."""
    from sts_lightning.forecast.predict import predict

    train = load_train(job)  # before the model: a missing file or unknown set fails at once
    model, tokenizer, sae, domains, timings = load_inputs(job)
    meta = {
        "model": job.model,
        "sae": job.sae or "trained (cached)",
        "train": job.train_file or job.train_set,
        "job": asdict(job),
    }
    pred = predict(model, tokenizer, sae, train, domains, job.predict, meta=meta)
    t0 = timings.pop("start")
    pred.timings |= timings | {"end_to_end": time.perf_counter() - t0}
    out = pred.save(job.output_dir)
    (out / "table.txt").write_text(pred.table() + "\n")
    pred.save_chart(out / "chart.png")
    return pred

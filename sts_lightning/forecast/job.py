"""``sts-lightning predict``: model + SAE + training data + domains → a saved forecast.

The job a recipe describes (``recipes/predict_*.yaml``). On the embedded default everything is
offline: SmolLM2-135M-Instruct rebuilt from its wheel, an SAE trained on its residual stream on
first use and cached, a reasoning-gym training set and MMLU / HumanEval domains from wheels.
Any HF model id or path and sae-lens id (``release/sae_id``) or SAE directory work the same way.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sts_lightning.data.prompts import Example, encode_example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.prediction import Prediction
from sts_lightning.model.capture import iter_span_activations
from sts_lightning.model.sae_training import SAETrainConfig

__all__ = [
    "PredictJob",
    "collect_activations",
    "job_parser",
    "load_examples",
    "load_job",
    "resolve_sae",
    "run_predict",
]

log = logging.getLogger(__name__)


@dataclass
class PredictJob:
    """A forecast run: what to load, what to score, where to write."""

    model: str = "embedded:smollm2"
    """HF model id, local checkpoint directory, or ``embedded:smollm2`` (offline default)."""
    dtype: str = "float32"
    """Dtype of the forward pass (``float32``, ``bfloat16``, ``float16``); the SAE runs in fp32."""
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

    def __post_init__(self) -> None:
        if not self.domains and not self.domain_files:
            raise ValueError("`domains` and `domain_files` are both empty: name at least one")
        if isinstance(self.sae_tokens, bool) or self.sae_tokens < 1:
            raise ValueError(f"`sae_tokens` must be a positive int, got {self.sae_tokens!r}")


def load_examples(path: str | Path) -> list[Example]:
    """Read ``{"prompt": ..., "answer": ...}`` JSON lines (``answer`` optional)."""
    examples = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            examples.append(Example(row["prompt"], row.get("answer")))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}:{i + 1}: expected a JSON object with a 'prompt': {err}"
            ) from err
    return examples


def collect_activations(
    model,
    tokenizer,
    examples: list[Example],
    *,
    layer: int,
    n_tokens: int,
    max_norm: float | None = None,
    outlier_factor: float = 10.0,
    batch_size: int = 8,
    seed: int = 0,
) -> Tensor:
    """Residual-stream rows ``(≤ n_tokens, d_model)`` of chat-formatted examples, for SAE training.

    Special tokens and rows with norm above ``max_norm`` (massive activations) are left out;
    ``None`` sets the threshold to ``outlier_factor`` × the median norm of the first batch, the
    same rule the predictor uses.
    """
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    encoded, planned = [], 0
    for e in examples:  # just enough sequences for the budget: an honest progress bar
        encoded.append(encode_example(tokenizer, e))
        start, end = encoded[-1].span("all")
        planned += end - start
        if planned >= n_tokens * 1.05:  # a little slack for special tokens and outliers
            break
    rows, total = [], 0
    for batch in iter_span_activations(
        model,
        [e.input_ids for e in encoded],
        [e.span("all") for e in encoded],
        layer=layer,
        batch_size=batch_size,
        pad_token_id=tokenizer.pad_token_id or 0,
        exclude_token_ids=set(tokenizer.all_special_ids),
        progress=True,
        desc="SAE data",
    ):
        norms = torch.linalg.vector_norm(batch, dim=-1)
        if max_norm is None and norms.numel():
            max_norm = float(norms.median()) * outlier_factor
        batch = batch[norms <= max_norm]
        rows.append(batch.cpu())
        total += batch.shape[0]
        if total >= n_tokens:
            break
    return torch.cat(rows)[:n_tokens]


def resolve_sae(job: PredictJob, model, tokenizer, cache: Path | None = None):
    """The job's SAE: loaded from ``job.sae``, or trained on first use and cached."""
    if cache is None:
        from sts_lightning.model.loading import default_cache_dir

        cache = Path(job.cache_dir) if job.cache_dir else default_cache_dir()
    from sts_lightning.model.sae import load_sae
    from sts_lightning.model.sae_training import train_sae

    if job.sae is not None:
        return load_sae(job.sae)
    layer = job.predict.layer
    if layer is None:
        raise ValueError("`predict.layer` must be set when `sae` is None (an SAE is trained)")
    from sts_lightning.data.domains import DOMAINS, load_domain, load_training_set

    cfg = job.sae_training
    max_norm = cfg.max_norm or job.predict.max_norm
    factor = job.predict.outlier_factor
    key = f"{job.model}/L{layer}/mixed-v1/{job.sae_tokens}/maxnorm{max_norm}/x{factor}"

    def rows() -> Tensor:  # only run on a cache miss
        texts = [e for name in DOMAINS for e in load_domain(name, split="score")]
        texts += [
            e
            for t in ("arithmetic", "family", "syllogism")
            for e in load_training_set(t, 500, seed=1234)
        ]
        return collect_activations(
            model,
            tokenizer,
            texts,
            layer=layer,
            n_tokens=job.sae_tokens,
            max_norm=max_norm,
            outlier_factor=factor,
            seed=cfg.seed,
        )

    return train_sae(
        _Lazy(rows),
        cfg=cfg,
        d_in=model.get_input_embeddings().weight.shape[1],
        cache_dir=cache / "sae",
        cache_key=key,
        layer=layer,
        model_name=job.model,
    )


class _Lazy:
    """An iterable that builds its rows on first iteration (skipped entirely on a cache hit)."""

    def __init__(self, build) -> None:
        self.build = build

    def __iter__(self):
        yield self.build()


def job_parser():
    """The ``sts-lightning predict`` argument parser (recipes are its ``--config`` files)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="sts-lightning predict",
        description="Forecast per-domain transferability before fine-tuning (STS).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a recipes/predict_*.yaml")
    parser.add_class_arguments(PredictJob, None, fail_untyped=True)
    return parser


def load_job(recipe: str | Path, *overrides: str) -> PredictJob:
    """A :class:`PredictJob` from a predict recipe (+ ``--key value`` overrides)."""
    parser = job_parser()
    cfg = parser.parse_args(["--config", str(recipe), *overrides])
    return PredictJob(**{k: v for k, v in vars(parser.instantiate(cfg)).items() if k != "config"})


def run_predict(job: PredictJob) -> Prediction:
    """Load everything the job names, forecast, and write the outputs; returns the prediction."""
    from sts_lightning.data.domains import load_domain, load_training_set
    from sts_lightning.forecast.predict import predict
    from sts_lightning.model.loading import default_cache_dir, load_model_and_tokenizer

    t0 = time.perf_counter()
    cache = Path(job.cache_dir) if job.cache_dir else default_cache_dir()
    model, tokenizer = load_model_and_tokenizer(
        job.model, dtype=job.dtype, trust_remote_code=job.trust_remote_code, cache_dir=cache
    )
    t_model = time.perf_counter()
    sae = resolve_sae(job, model, tokenizer, cache)
    t_sae = time.perf_counter()
    if job.train_file:
        train = load_examples(job.train_file)
    else:
        train = load_training_set(job.train_set, job.train_examples, seed=job.predict.seed)
    domains = {name: load_domain(name, split="score") for name in job.domains}
    domains |= {name: load_examples(path) for name, path in job.domain_files.items()}
    meta = {
        "model": job.model,
        "sae": job.sae or "trained (cached)",
        "train": job.train_file or job.train_set,
        "job": asdict(job),
    }
    pred = predict(model, tokenizer, sae, train, domains, job.predict, meta=meta)
    pred.timings |= {
        "load_model": t_model - t0,
        "sae": t_sae - t_model,
        "end_to_end": time.perf_counter() - t0,
    }
    out = pred.save(job.output_dir)
    (out / "table.txt").write_text(pred.table() + "\n")
    pred.save_chart(out / "chart.png")
    return pred

"""Which SAE a run reads: a named one, or one trained on a fixed text mix and cached.

The embedded default's SAE ships in the package (:mod:`~sts_lightning.model.shipped_sae`): a
run that asks for exactly it reads it on a cache miss instead of training it.

``sts-lightning predict`` and ``sts-lightning experiment`` share this policy, so that they
train (or find in the cache) the very same SAE for the same model, layer and row rule.

The cache key names the activations the SAE was trained on: model, layer, text mix, token
budget and massive-activation rule. The default mix keeps the tag ``mixed-v1`` it has always
had, so SAEs cached before the mix became configurable are still found.

The SAE is trained on residual-stream rows of chat-formatted examples through the model
(:func:`collect_activations`), taken with the same massive-activation rule as every statistic
(:class:`~sts_lightning.model.rows.RowFilter`), so it is trained on the kind of rows it will
later encode.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sts_lightning.config import check_fields, one_of, positive_int
from sts_lightning.data.domains import DOMAINS, TRAINING_SETS, load_domain, load_training_set
from sts_lightning.data.prompts import Example, encode_example
from sts_lightning.model.capture import iter_span_activations
from sts_lightning.model.rows import RowFilter
from sts_lightning.model.run_inputs import resolve_pad_id
from sts_lightning.model.sae_training import SAETrainConfig, train_sae

__all__ = [
    "DEFAULT_MIX_TASKS",
    "SAESourceConfig",
    "collect_activations",
    "resolve_run_sae",
    "resolve_sae",
]

DEFAULT_MIX_TASKS: tuple[str, ...] = ("arithmetic", "family", "syllogism")
"""Built-in training sets in the default SAE training mix."""

# The tag of the default mix in the cache key; other mixes get a tag derived from their content.
_DEFAULT_MIX_TAG = "mixed-v1"
_DEFAULT_MIX = {"domains": list(DOMAINS), "tasks": list(DEFAULT_MIX_TASKS), "n": 500, "seed": 1234}


@dataclass
class SAESourceConfig:
    """Which SAE: loaded by name, or trained on a text mix on first use and cached."""

    sae: str | None = None
    """sae-lens id ``release/sae_id`` or a local sae-lens directory. ``None`` trains one on the
    model's residual stream on first use and caches it."""
    training: SAETrainConfig = field(default_factory=SAETrainConfig)
    """How the SAE is trained when ``sae`` is ``None``."""
    tokens: int = 150_000
    """Residual-stream rows collected to train the SAE (from the mix below)."""
    mix_domains: list[str] | None = None
    """Built-in domains whose "score" half is in the training mix; ``None``: every one of
    :data:`~sts_lightning.data.domains.DOMAINS`."""
    mix_tasks: list[str] = field(default_factory=lambda: list(DEFAULT_MIX_TASKS))
    """Built-in training sets whose problems are in the training mix."""
    mix_task_examples: int = 500
    """Problems drawn from each of ``mix_tasks``."""
    mix_seed: int = 1234
    """Seed of the problems drawn from ``mix_tasks``."""

    def __post_init__(self) -> None:
        check_fields(self, positive_int, "tokens", "mix_task_examples")
        for name in self.mix_domains or ():
            one_of("mix_domains", name, DOMAINS)
        for name in self.mix_tasks:
            one_of("mix_tasks", name, TRAINING_SETS)

    def _mix(self) -> dict[str, Any]:
        domains = list(DOMAINS) if self.mix_domains is None else list(self.mix_domains)
        tasks, n, seed = list(self.mix_tasks), self.mix_task_examples, self.mix_seed
        return {"domains": domains, "tasks": tasks, "n": n, "seed": seed}

    def mix_tag(self) -> str:
        """The mix's name in the cache key: ``mixed-v1`` for the default, else a content hash."""
        mix = self._mix()
        if mix == _DEFAULT_MIX:
            return _DEFAULT_MIX_TAG
        digest = hashlib.sha256(json.dumps(mix, sort_keys=True).encode()).hexdigest()[:12]
        return f"mixed-{digest}"

    def mix_texts(self) -> list[Example]:
        """The training mix: each domain's "score" half, then each task's drawn problems."""
        mix = self._mix()
        texts = [e for name in mix["domains"] for e in load_domain(name, split="score")]
        draws = [load_training_set(t, mix["n"], seed=mix["seed"]) for t in mix["tasks"]]
        return texts + [e for drawn in draws for e in drawn]

    def cache_key(
        self, model_name: str, layer: int, max_norm: float | None, outlier_factor: float
    ) -> str:
        """What the trained SAE's activations were: model, layer, mix, budget and row rule.

        Example:
            >>> SAESourceConfig(tokens=100_000).cache_key("embedded:smollm2", 12, 500.0, 10.0)
            'embedded:smollm2/L12/mixed-v1/100000/maxnorm500.0/x10.0'
        """
        return (
            f"{model_name}/L{layer}/{self.mix_tag()}/{self.tokens}"
            f"/maxnorm{max_norm}/x{outlier_factor}"
        )


def resolve_sae(
    source: SAESourceConfig,
    model_name: str,
    model,
    tokenizer,
    *,
    layer: int | None,
    max_norm: float | None = None,
    outlier_factor: float = 10.0,
    cache_dir: str | Path | None = None,
    shipped: bool = True,
) -> Any:
    """The SAE ``source`` names: loaded, or trained on ``model`` on first use and cached.

    Args:
        source: Which SAE.
        model_name: The model's name as the run gives it (part of the cache key and metadata).
        model: The loaded causal LM (read only on a cache miss).
        tokenizer: Its tokenizer.
        layer: Decoder layer the SAE reads; required when an SAE is trained.
        max_norm: Row-norm threshold used when ``source.training.max_norm`` is ``None``;
            ``None`` derives it from the first batch.
        outlier_factor: Multiple of the median norm used when no threshold is given.
        cache_dir: Cache root (trained SAEs live in its ``sae/``); ``None``: the default cache.
        shipped: Read the SAE shipped in the package when it is this one (see
            :func:`~sts_lightning.model.sae_training.train_sae`); ``False`` trains on a miss.

    Returns:
        A frozen sae-lens SAE.

    Raises:
        ValueError: ``layer`` is ``None`` while an SAE must be trained.
    """
    from sts_lightning.model.capture import model_width
    from sts_lightning.model.loading import default_cache_dir
    from sts_lightning.model.sae import load_sae

    if source.sae is not None:
        return load_sae(source.sae)
    if layer is None:
        raise ValueError("`predict.layer` must be set when `sae` is None (an SAE is trained)")
    cfg = source.training
    max_norm = cfg.max_norm or max_norm

    def rows() -> Tensor:  # only run on a cache miss
        return collect_activations(
            model,
            tokenizer,
            source.mix_texts(),
            layer=layer,
            n_tokens=source.tokens,
            max_norm=max_norm,
            outlier_factor=outlier_factor,
            seed=cfg.seed,
        )

    return train_sae(
        _Lazy(rows),
        cfg=cfg,
        d_in=model_width(model),
        cache_dir=Path(cache_dir or default_cache_dir()) / "sae",
        cache_key=source.cache_key(model_name, layer, max_norm, outlier_factor),
        layer=layer,
        model_name=model_name,
        shipped=shipped,
    )


def resolve_run_sae(
    run: Any, model, tokenizer, cache_dir: str | Path | None = None, *, shipped: bool = True
) -> Any:
    """The SAE a run's settings name, with the default training mix.

    Args:
        run: The run's settings (``PredictJobConfig``, ``ExperimentConfig``): its ``model``,
            ``sae``, ``sae_training``, ``sae_tokens`` and ``cache_dir`` fields, and
            ``predict.layer``, ``predict.max_norm`` and ``predict.outlier_factor``.
        model: The loaded causal LM.
        tokenizer: Its tokenizer.
        cache_dir: Cache root; ``None``: the run's ``cache_dir``, then the default cache.
        shipped: Read the SAE shipped in the package when it is this one; ``False`` trains on
            a cache miss.

    Example:
        >>> from sts_lightning.forecast.job import load_job
        >>> job = load_job("recipes/predict_arithmetic_smollm2.yaml")  # doctest: +SKIP
        >>> sae = resolve_run_sae(job, model, tokenizer)  # doctest: +SKIP
    """
    source = SAESourceConfig(sae=run.sae, training=run.sae_training, tokens=run.sae_tokens)
    rule = run.predict
    return resolve_sae(
        source,
        run.model,
        model,
        tokenizer,
        layer=rule.layer,
        max_norm=rule.max_norm,
        outlier_factor=rule.outlier_factor,
        cache_dir=cache_dir or getattr(run, "cache_dir", None),
        shipped=shipped,
    )


class _Lazy:
    """An iterable that builds its rows on first iteration (skipped entirely on a cache hit)."""

    def __init__(self, build) -> None:
        self.build = build

    def __iter__(self):
        yield self.build()


# ---------------------------------------------------------------- training rows
# Sequences are encoded until their spans hold this much more than the budget: special tokens
# and massive activations are dropped after encoding, and the progress bar stays honest.
_SLACK = 1.05


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

    Special tokens, non-finite rows and rows with norm above ``max_norm`` (massive activations)
    are left out; ``None`` sets the threshold to ``outlier_factor`` × the median norm of the
    finite rows of the first batch, the same rule the predictor uses.

    Args:
        model: A Hugging Face causal LM.
        tokenizer: Its tokenizer (chat template, special tokens, pad token).
        examples: Texts to run; shuffled with ``seed``, then taken in order until the budget.
        layer: Decoder layer whose output (the residual stream) is collected.
        n_tokens: Row budget.
        max_norm: Largest row norm kept; ``None`` derives it from the first batch.
        outlier_factor: Multiple of the median norm used when ``max_norm`` is ``None``.
        batch_size: Sequences per forward pass.
        seed: Seed of the shuffle.

    Returns:
        float32 rows ``(n, d_model)`` on the CPU, ``n ≤ n_tokens``.
    """
    examples = list(examples)
    random.Random(seed).shuffle(examples)
    encoded, planned = [], 0
    for e in examples:  # just enough sequences for the budget: an honest progress bar
        encoded.append(encode_example(tokenizer, e))
        start, end = encoded[-1].span("all")
        planned += end - start
        if planned >= n_tokens * _SLACK:
            break
    keep = RowFilter(max_norm, outlier_factor)
    rows, total = [], 0
    for batch in iter_span_activations(
        model,
        [e.input_ids for e in encoded],
        [e.span("all") for e in encoded],
        layer=layer,
        batch_size=batch_size,
        pad_token_id=resolve_pad_id(tokenizer),
        exclude_token_ids=set(tokenizer.all_special_ids),
        progress=True,
        desc="SAE data",
    ):
        batch = batch[keep(batch)]
        rows.append(batch.cpu())
        total += batch.shape[0]
        if total >= n_tokens:
            break
    return torch.cat(rows)[:n_tokens]

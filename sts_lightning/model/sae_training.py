"""Train a CPU-sized SAE on residual-stream rows with sae-lens, cached on disk.

Read top to bottom: the recipe (:class:`SAETrainConfig`), the cache, the fit, then
:func:`train_sae`, which runs them in this order:

1. Look the config up in the cache (``cache_dir/<name>-<hash of cache_key + config>``), then
   among the SAEs shipped in the package under the same name
   (:mod:`~sts_lightning.model.shipped_sae`); a hit returns without touching ``activations``
   (a lazy generator is never run). A cache directory
   is published by a rename of a finished private temp dir, so it holds both sae-lens files
   exactly when the SAE is cached; an unreadable entry (a bad disk, a foreign writer) is
   dropped and retrained.
2. Gather the rows ``(n, d_in)``, drop non-finite and massive-activation rows
   (:func:`~sts_lightning.model.rows.keep_rows`), shuffle them with the seed (the trainer expects
   iid batches) and hold out rows for FVU logging (:func:`prepare_rows`).
3. Pre-scale the training rows to mean norm √d_in. sae-lens can do this itself
   (``normalize_activations="expected_average_only_in"``) but folds the scale in only at the end
   of ``fit()``, so evaluation during training would see the wrong scale.
4. Fit a ``TopKTrainingSAE`` (or ``StandardTrainingSAE``) with ``SAETrainer`` (:func:`fit`): no
   wandb, an explicit ``lr_end``, and a ``dead_feature_window`` short enough for TopK's
   auxiliary loss to start within a CPU run (the default 1,000 steps is longer than the whole
   run); held-out quality is logged between the batches it pulls.
5. Fold the scale into the weights (``W_enc *= s``, ``W_dec /= s``, ``b_dec /= s``) so the saved
   SAE takes *raw* activations, save it (temp dir, then rename: a partial cache is never read) and
   load it back as an inference SAE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from sts_lightning.config import at_least, check_fields, one_of, positive, positive_int
from sts_lightning.model.device import resolve_device
from sts_lightning.model.rows import keep_rows
from sts_lightning.model.sae import evaluate_sae, is_sae_dir, load_sae, resid_post_hook

__all__ = [
    "SAETrainConfig",
    "fit",
    "load_cached",
    "prepare_rows",
    "publish",
    "sae_cache_path",
    "train_sae",
]

logger = logging.getLogger(__name__)


@dataclass
class SAETrainConfig:
    """How to train the SAE.

    Defaults: the CPU-sized recipe measured on SmolLM2-135M layer 12 by
    ``benchmarks/sae_training.py``: d_sae 4,608, k 32, 200 steps of 2,048 rows on 100k cached
    tokens → held-out FVU 0.17, L0 32 in ~2.3 min on 2 cores. Pass ``max_norm=500`` there to drop
    massive activations.
    """

    architecture: Literal["topk", "standard"] = "topk"
    """``"topk"`` (sparsity fixed by ``k``) or ``"standard"`` (ReLU + L1 penalty)."""
    d_sae: int | None = None
    """Number of latents; ``None`` → ``expansion_factor × d_in``."""
    expansion_factor: int = 8
    """Latents per input dimension when ``d_sae`` is ``None`` (8 × 576 = 4,608 for SmolLM2)."""
    k: int = 32
    """Active latents per token (TopK only)."""
    l1_coefficient: float = 5.0
    """Weight of the L1 sparsity penalty (standard only), on inputs of mean norm √d_in."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    lr_warm_up_steps: int = 10
    """Linear warm-up steps."""
    lr_decay_steps: int = 40
    """Final steps of linear decay to 0 (~20 % of the run)."""
    batch_size: int = 2048
    """Rows per step."""
    training_tokens: int = 409_600
    """Rows seen in total (steps = training_tokens // batch_size; default 200 steps, ~2.3 min on
    2 cores); more than the unique rows means several passes (4 over 100k cached tokens)."""
    max_norm: float | None = None
    """Drop rows with a larger norm (massive activations; 500 at SmolLM2 layer 12). ``None``
    keeps every finite row."""
    dead_feature_window: int = 50
    """Steps without firing after which a latent counts as dead (feeds TopK's auxiliary loss)."""
    n_eval_rows: int = 4096
    """Rows held out (never trained on) for FVU logging; at most a tenth of the rows."""
    eval_every: int = 50
    """Log held-out FVU / L0 every this many steps."""
    seed: int = 0
    """Seeds the initialisation, the shuffle and the held-out split."""
    device: str = "cpu"
    """Where to train; not part of the cache key."""

    def __post_init__(self) -> None:
        one_of("architecture", self.architecture, ("topk", "standard"))
        counts = ("expansion_factor", "k", "batch_size", "training_tokens", "n_eval_rows")
        check_fields(self, positive_int, *counts, "dead_feature_window", "eval_every")
        if self.d_sae is not None:
            positive_int("d_sae", self.d_sae)
        positive("lr", self.lr)
        at_least("l1_coefficient", self.l1_coefficient, 0)
        positive("max_norm", self.max_norm, optional=True)
        steps = self.training_tokens // self.batch_size
        # One message for both: they share the run's steps, so neither is wrong on its own.
        if min(self.lr_warm_up_steps, self.lr_decay_steps) < 0 or (
            self.lr_warm_up_steps + self.lr_decay_steps > steps
        ):
            raise ValueError(
                f"`lr_warm_up_steps` + `lr_decay_steps` = {self.lr_warm_up_steps} + "
                f"{self.lr_decay_steps} must be >= 0 and fit in the {steps} steps of "
                f"`training_tokens` // `batch_size`"
            )

    def resolved_d_sae(self, d_in: int) -> int:
        """``d_sae``, or ``expansion_factor × d_in`` when it is ``None``."""
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in


# ---------------------------------------------------------------- cache
_CACHE_FORMAT = 1  # bump when the training recipe changes what a config produces


def sae_cache_path(
    cache_dir: str | Path,
    cache_key: str,
    cfg: SAETrainConfig,
    d_in: int,
    layer: int | None = None,
) -> Path:
    """Where :func:`train_sae` keeps the SAE for this data key
    and config.

    ``cache_key`` must name the activations (model, layer, data, token selection): the cache
    cannot see them. The directory exists (with both files) exactly when the SAE is cached, so
    callers can skip building the activations.
    """
    # Everything that changes the trained weights; not where it ran or how often it was logged.
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("device", "eval_every")}
    blob = json.dumps(
        {"format": _CACHE_FORMAT, "key": cache_key, "d_in": d_in, "layer": layer, "cfg": recipe},
        sort_keys=True,
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"sae-{cfg.architecture}-{cfg.resolved_d_sae(d_in)}-{digest}"


def load_cached(final: Path, device: str | torch.device) -> Any | None:
    """The SAE cached at ``final``, frozen; ``None`` on a miss or an unreadable entry (removed)."""
    if not is_sae_dir(final):
        return None
    try:
        sae = load_sae(final, device=device)
    except ValueError as err:  # corrupted (a bad disk, a foreign writer): rebuild it
        logger.warning("SAE cache entry %s is unreadable, retraining: %s", final, err)
        shutil.rmtree(final, ignore_errors=True)
        return None
    logger.info("SAE cache hit: %s", final)
    return sae


def _load_shipped(name: str, device: str | torch.device) -> Any | None:
    """The SAE shipped in the package under the cache entry ``name``, frozen; else ``None``."""
    from sts_lightning.model.shipped_sae import shipped_sae_dir

    path = shipped_sae_dir(name)
    if path is None:
        return None
    logger.info("SAE shipped with the package: %s", path)
    return load_sae(path, device=device)


def publish(sae: Any, final: Path) -> None:
    """Save to a private temp dir, then rename it into place: readers never see a partial SAE."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        sae.save_inference_model(tmp)
        # sae-lens writes cfg.json's keys in an order that varies between processes (string
        # hashing); sorted, the same SAE is the same bytes (model/shipped_sae.py compares them).
        cfg = tmp / "cfg.json"
        cfg.write_text(json.dumps(json.loads(cfg.read_text()), sort_keys=True))
        if final.exists() and not is_sae_dir(final):  # a leftover that was never published
            shutil.rmtree(final, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:
            if not is_sae_dir(final):
                raise
            # Another process published the same config first: its SAE is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("SAE saved to %s", final)


# ---------------------------------------------------------------- fit
def _gather(activations: Iterable[Tensor] | Tensor, d_in: int) -> Tensor:
    """All rows as one float32 CPU tensor ``(n, d_in)``, each batch checked."""
    batches = [activations] if isinstance(activations, Tensor) else activations
    chunks = []
    for batch in batches:
        if not isinstance(batch, Tensor) or batch.ndim != 2 or batch.shape[1] != d_in:
            shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
            raise ValueError(f"`activations` must be rows (n, d_in={d_in}), got {shape}")
        chunks.append(batch.detach().to("cpu", torch.float32))
    return torch.cat(chunks) if chunks else torch.empty(0, d_in)


def prepare_rows(
    activations: Iterable[Tensor] | Tensor, cfg: SAETrainConfig, d_in: int
) -> tuple[Tensor, Tensor, float]:
    """Gather, filter, shuffle and split rows; pre-scale the training rows in place.

    Args:
        activations: Rows ``(n, d_in)`` or an iterable of such batches.
        cfg: The recipe (``max_norm``, ``seed``, ``n_eval_rows``, ``batch_size``).
        d_in: Activation width.

    Returns:
        ``(train_rows, eval_rows, scale)``: scaled training rows ``(n_train, d_in)``, raw held-out
        rows ``(n_eval, d_in)`` and the scale applied to the training rows.
    """
    rows = _gather(activations, d_in)  # (n, d_in)
    mask = keep_rows(rows, cfg.max_norm if cfg.max_norm is not None else math.inf)
    logger.info(
        "SAE training rows: %d, dropped %d (non-finite or norm > %s)",
        int(mask.sum()),
        int((~mask).sum()),
        cfg.max_norm,
    )
    rows = rows[mask]
    generator = torch.Generator().manual_seed(cfg.seed)
    rows = rows[torch.randperm(rows.shape[0], generator=generator)]
    n_eval = min(cfg.n_eval_rows, rows.shape[0] // 10)
    eval_rows, train_rows = rows[:n_eval], rows[n_eval:]
    if train_rows.shape[0] < cfg.batch_size or n_eval == 0:
        raise ValueError(
            f"`activations` has {train_rows.shape[0]} usable training rows (+{n_eval} held out); "
            f"need at least `batch_size`={cfg.batch_size} and 10 rows per held-out row"
        )
    scale = math.sqrt(d_in) / float(train_rows.norm(dim=1).mean())
    train_rows.mul_(scale)
    return train_rows, eval_rows.clone(), scale


def _cuda_devices(device: str) -> list[int]:
    """The CUDA devices whose RNG state a seeded block on ``device`` changes (none on a CPU).

    Example:
        >>> _cuda_devices("cpu")
        []
    """
    where = torch.device(device)
    if where.type != "cuda":
        return []
    return [torch.cuda.current_device() if where.index is None else where.index]


def _batches(rows: Tensor, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless shuffled batches ``(batch_size, d_in)``, a new permutation every pass."""
    generator = torch.Generator().manual_seed(seed + 1)
    while True:
        order = torch.randperm(rows.shape[0], generator=generator)
        for start in range(0, rows.shape[0] - batch_size + 1, batch_size):
            yield rows[order[start : start + batch_size]]


def _training_sae(cfg: SAETrainConfig, d_in: int, train_rows: Tensor) -> Any:
    """A seeded sae-lens training SAE, its decoder bias at the mean of ``train_rows``."""
    import sae_lens

    common = dict(
        d_in=d_in,
        d_sae=cfg.resolved_d_sae(d_in),
        device=cfg.device,
        dtype="float32",
        normalize_activations="none",
    )
    # Seed the init without touching the caller's RNG (the CUDA one too when training there).
    with torch.random.fork_rng(devices=_cuda_devices(cfg.device)):
        torch.manual_seed(cfg.seed)
        if cfg.architecture == "topk":
            sae = sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(k=cfg.k, **common))
        else:
            sae = sae_lens.StandardTrainingSAE(
                sae_lens.StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, **common)
            )
    with torch.no_grad():
        # Start the decoder bias at the data mean (sae-lens starts it at 0): the residual stream
        # has a large mean that Adam would otherwise spend many of our few steps learning.
        sae.b_dec.copy_(train_rows.mean(dim=0))
    return sae


def _trainer_config(cfg: SAETrainConfig, steps: int) -> Any:
    """sae-lens' ``SAETrainerConfig``: no wandb, an explicit ``lr_end``, a short dead window."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,  # the "constant" schedule decays linearly from lr_end to 0
        lr_scheduler_name="constant",
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        device=cfg.device,
        dead_feature_window=cfg.dead_feature_window,
        # Longer than the run: its end-of-window log builds wandb histograms we never use.
        feature_sampling_window=steps + 1,
        logger=LoggingConfig(log_to_wandb=False),
    )


def _reporter(
    sae: Any,
    scaled_eval: Tensor,
    cfg: SAETrainConfig,
    steps: int,
    on_eval: Callable[[dict[str, float]], None] | None,
) -> Callable[[int], None]:
    """``report(step)``: evaluate on the held-out rows, log, and pass the record to ``on_eval``."""
    start = time.perf_counter()

    def report(step: int) -> None:
        quality = evaluate_sae(sae, scaled_eval)  # FVU and L0 do not depend on the scale
        record = {
            "step": step,
            "tokens": step * cfg.batch_size,
            "elapsed_s": time.perf_counter() - start,
            **quality,
        }
        logger.info(
            "SAE step %d/%d (%.0f s): held-out FVU %.4f, L0 %.1f, dead %.1f %%",
            step,
            steps,
            record["elapsed_s"],
            quality["fvu"],
            quality["l0"],
            100 * quality["dead_fraction"],
        )
        if on_eval is not None:
            on_eval(record)

    return report


def fit(
    train_rows: Tensor,
    eval_rows: Tensor,
    scale: float,
    cfg: SAETrainConfig,
    d_in: int,
    on_eval: Callable[[dict[str, float]], None] | None,
) -> Any:
    """Train an SAE on pre-scaled rows and fold ``scale`` into it.

    Args:
        train_rows: Scaled training rows ``(n_train, d_in)`` (from :func:`prepare_rows`).
        eval_rows: Raw held-out rows ``(n_eval, d_in)``.
        scale: The factor the training rows were multiplied by.
        cfg: The recipe.
        d_in: Activation width.
        on_eval: Called with each held-out evaluation record.

    Returns:
        The trained sae-lens training SAE, taking *raw* activations.
    """
    import sae_lens

    steps = cfg.training_tokens // cfg.batch_size
    sae = _training_sae(cfg, d_in, train_rows)
    trainer_cfg = _trainer_config(cfg, steps)
    report = _reporter(sae, eval_rows.to(cfg.device) * scale, cfg, steps, on_eval)

    def data() -> Iterator[Tensor]:
        # SAETrainer.fit logs only to wandb: evaluate between the batches it pulls instead.
        for step, batch in enumerate(_batches(train_rows, cfg.batch_size, cfg.seed)):
            if step % cfg.eval_every == 0:
                report(step)
            yield batch.to(cfg.device)  # rows wait on the CPU; each batch trains where the SAE is

    with torch.random.fork_rng(devices=_cuda_devices(cfg.device)):
        torch.manual_seed(cfg.seed)
        sae_lens.SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=data()).fit()
    report(steps)
    sae.fold_activation_norm_scaling_factor(scale)
    return sae


# ---------------------------------------------------------------- train_sae
def _check_args(d_in: int, cache_dir: Any, cache_key: Any, layer: Any) -> None:
    positive_int("d_in", d_in)
    if (cache_dir is None) != (cache_key is None):
        raise ValueError(
            "`cache_dir` and `cache_key` must be given together (the key names the "
            f"activations), got cache_dir={cache_dir!r}, cache_key={cache_key!r}"
        )
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise ValueError(f"`layer` must be a non-negative int or None, got {layer!r}")


def _record(sae: Any, eval_rows: Tensor, scale: float, layer: int | None, model_name: Any) -> None:
    """Write what the SAE reads and how good it is on held-out raw rows into its metadata."""
    metadata = sae.cfg.metadata
    if layer is not None:
        metadata.hook_name = resid_post_hook(layer)
    if model_name is not None:
        metadata.model_name = model_name
    metadata.activation_scale_folded = scale
    final_eval = evaluate_sae(sae, eval_rows)  # raw rows: checks the fold too
    logger.info(
        "SAE trained: held-out FVU %.4f, L0 %.1f, dead %.1f %%",
        final_eval["fvu"],
        final_eval["l0"],
        100 * final_eval["dead_fraction"],
    )
    metadata.eval_fvu, metadata.eval_l0 = final_eval["fvu"], final_eval["l0"]


def train_sae(
    activations: Iterable[Tensor] | Tensor,
    *,
    cfg: SAETrainConfig,
    d_in: int,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
    layer: int | None = None,
    model_name: str | None = None,
    on_eval: Callable[[dict[str, float]], None] | None = None,
    shipped: bool = True,
) -> Any:
    """Train an SAE on activation rows (or load it from the cache) and return it frozen.

    Args:
        activations: Rows ``(n, d_in)``, or an iterable of such batches (consumed once, only on
            a cache miss). Position 0 / pad tokens should already be excluded by the caller.
        cfg: Training recipe.
        d_in: Activation width (the model's ``d_model``).
        cache_dir: Directory of cached SAEs; ``None`` trains every time.
        cache_key: Names the activations (e.g. ``"smollm2-135m/L12/mixed-v1"``); required with
            ``cache_dir``.
        layer: The activations are the residual stream after this decoder layer: recorded as
            ``blocks.{layer}.hook_resid_post`` in the SAE's metadata.
        model_name: Recorded in the metadata.
        on_eval: Called with each held-out evaluation (``step``, ``tokens``, ``elapsed_s``,
            ``fvu``, ``l0``, ``dead_fraction``); every one is also logged.
        shipped: On a cache miss, read the SAE shipped in the package under the cache entry's
            name (:mod:`~sts_lightning.model.shipped_sae`) before training; ``False`` trains.

    Returns:
        An inference sae-lens SAE that takes *raw* activations, frozen, in eval mode, on
        ``cfg.device`` (``"auto"``: CUDA when available).

    Raises:
        ValueError: ``cfg.device`` names a device this machine does not have.
    """
    _check_args(d_in, cache_dir, cache_key, layer)
    # The device is no part of the cache key: the same SAE, trained or loaded where asked.
    device = resolve_device(cfg.device, "sae_training.device")
    cfg = dataclasses.replace(cfg, device=str(device))
    final = None if cache_dir is None else sae_cache_path(cache_dir, cache_key, cfg, d_in, layer)
    if final is not None:
        cached = load_cached(final, cfg.device)
        if cached is None and shipped:
            cached = _load_shipped(final.name, cfg.device)
        if cached is not None:
            return cached

    train_rows, eval_rows, scale = prepare_rows(activations, cfg, d_in)
    sae = fit(train_rows, eval_rows, scale, cfg, d_in, on_eval)
    _record(sae, eval_rows, scale, layer, model_name)
    if final is None:
        with tempfile.TemporaryDirectory() as tmp:
            sae.save_inference_model(tmp)
            return load_sae(tmp, device=cfg.device)
    publish(sae, final)
    return load_sae(final, device=cfg.device)

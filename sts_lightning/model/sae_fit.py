"""Fit an SAE with sae-lens on residual-stream rows: the uncached half of ``train_sae``.

:func:`prepare_rows` gathers, filters, shuffles and splits the rows and pre-scales the training
rows to mean norm √d_in (sae-lens' own ``normalize_activations="expected_average_only_in"`` folds
the scale in only at the end of ``fit()``, so evaluation during training would see the wrong
scale). :func:`fit` trains a ``TopKTrainingSAE`` (or ``StandardTrainingSAE``) with
``SAETrainer``, logs held-out quality between the batches it pulls, and folds the scale into the
weights so the result takes *raw* activations.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from sts_lightning.model.rows import keep_rows
from sts_lightning.model.sae_config import SAETrainConfig
from sts_lightning.model.sae_quality import evaluate_sae

__all__ = ["fit", "prepare_rows"]

logger = logging.getLogger(__name__)


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

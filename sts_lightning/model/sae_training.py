"""Train a CPU-sized SAE on residual-stream rows with sae-lens, cached on disk.

Read top to bottom, the data flows as :func:`train_sae` runs it (each step's module in brackets):

1. Look the config up in the cache (``cache_dir/<name>-<hash of cache_key + config>``); a hit
   returns without touching ``activations`` (a lazy generator is never run)
   (:mod:`~sts_lightning.model.sae_cache`).
2. Gather the rows ``(n, d_in)``, drop non-finite and massive-activation rows
   (:func:`~sts_lightning.model.rows.keep_rows`), shuffle them with the seed (the trainer expects
   iid batches) and hold out rows for FVU logging (:mod:`~sts_lightning.model.sae_fit`).
3. Pre-scale the training rows to mean norm √d_in. sae-lens can do this itself
   (``normalize_activations="expected_average_only_in"``) but folds the scale in only at the end
   of ``fit()``, so evaluation during training would see the wrong scale.
4. Fit a ``TopKTrainingSAE`` (or ``StandardTrainingSAE``) with ``SAETrainer``: no wandb, an
   explicit ``lr_end``, and a ``dead_feature_window`` short enough for TopK's auxiliary loss to
   start within a CPU run (the default 1,000 steps is longer than the whole run).
5. Fold the scale into the weights (``W_enc *= s``, ``W_dec /= s``, ``b_dec /= s``) so the saved
   SAE takes *raw* activations, save it (temp dir, then rename: a partial cache is never read) and
   load it back as an inference SAE.

The recipe is :class:`~sts_lightning.model.sae_config.SAETrainConfig`; it and
:func:`~sts_lightning.model.sae_cache.sae_cache_path` are importable from here.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import Tensor

from sts_lightning.config import positive_int
from sts_lightning.model.device import resolve_device
from sts_lightning.model.sae import resid_post_hook
from sts_lightning.model.sae_cache import load_cached, publish, sae_cache_path
from sts_lightning.model.sae_config import SAETrainConfig
from sts_lightning.model.sae_fit import fit, prepare_rows
from sts_lightning.model.sae_load import load_sae
from sts_lightning.model.sae_quality import evaluate_sae

__all__ = ["SAETrainConfig", "sae_cache_path", "train_sae"]

logger = logging.getLogger(__name__)


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

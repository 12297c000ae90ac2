"""The on-disk cache of trained SAEs: one directory per (activations key, recipe).

A directory is published by a rename of a finished private temp dir, so it holds both sae-lens
files exactly when the SAE is cached; an unreadable entry (a bad disk, a foreign writer) is
dropped and retrained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sts_lightning.model.sae_config import SAETrainConfig
from sts_lightning.model.sae_load import is_sae_dir, load_sae

__all__ = ["load_cached", "publish", "sae_cache_path"]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1  # bump when the training recipe changes what a config produces


def sae_cache_path(
    cache_dir: str | Path,
    cache_key: str,
    cfg: SAETrainConfig,
    d_in: int,
    layer: int | None = None,
) -> Path:
    """Where :func:`~sts_lightning.model.sae_training.train_sae` keeps the SAE for this data key
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


def publish(sae: Any, final: Path) -> None:
    """Save to a private temp dir, then rename it into place: readers never see a partial SAE."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        sae.save_inference_model(tmp)
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

"""What an STS callback makes of its arguments: its settings, then its tracker.

Both callbacks (Lightning ``STSCallback`` and HF/TRL ``STSTrainerCallback``) take a
``PredictConfig`` and a ``TrackerConfig`` (or, from an HF checkpoint, their fields as JSON
dicts) plus ``k``, ``layer`` and ``every_n_steps`` as arguments of their own
(:func:`tracking_configs` merges them; ``k`` and ``layer`` left ``None`` keep the forecast's),
and an SAE and domains as the user names them (:func:`build_tracker` loads and resolves them
into an :class:`STSTracker`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from sts_lightning.data.examples import DomainSpec, resolve_domains
from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.prediction import Prediction
from sts_lightning.monitor.tracker import Evaluator, STSTracker, TrackerConfig

__all__ = ["build_tracker", "tracking_configs"]


def tracking_configs(
    predict_config: PredictConfig | Mapping[str, Any] | None,
    tracker_config: TrackerConfig | Mapping[str, Any] | None,
    *,
    k: int | None,
    layer: int | None,
    every_n_steps: int,
) -> tuple[PredictConfig, TrackerConfig]:
    """The settings of an STS callback: its configs with its own ``k``/``layer``/``every_n_steps``.

    Args:
        predict_config: A ``PredictConfig``, or its fields as a dict (JSON, as HF checkpoints
            store it); ``None`` or a dict default to no progress bars (training has its own).
        tracker_config: A ``TrackerConfig``, or its fields as a dict.
        k: Replaces ``predict_config.k`` unless ``None`` (the forecast's ``k``).
        layer: Replaces ``predict_config.layer`` unless ``None`` (the forecast's layer, which
            ``None`` in turn reads from the SAE's metadata).
        every_n_steps: Replaces ``tracker_config.every_n_steps``.

    Returns:
        ``(predict_config, tracker_config)``: new objects, the arguments are left untouched.
    """
    if not isinstance(predict_config, PredictConfig):
        predict_config = PredictConfig(**{"progress": False, **(predict_config or {})})
    if not isinstance(tracker_config, TrackerConfig):
        tracker_config = TrackerConfig(**(tracker_config or {}))
    return (
        replace(
            predict_config,
            k=predict_config.k if k is None else k,
            layer=predict_config.layer if layer is None else layer,
        ),
        replace(tracker_config, every_n_steps=every_n_steps),
    )


def build_tracker(
    sae: Any,
    domains: DomainSpec,
    train_examples: Sequence[Example] | Callable[[], Sequence[Example]],
    *,
    device: torch.device | str | None,
    heldout_items: int,
    predict_config: PredictConfig,
    tracker_config: TrackerConfig,
    evaluator: Evaluator | None = None,
    prediction: Prediction | None = None,
) -> STSTracker:
    """An :class:`STSTracker` from a callback's arguments, before :meth:`~STSTracker.start`.

    Args:
        sae: sae-lens id, local SAE directory or loaded SAE (see
            :func:`~sts_lightning.model.sae.load_sae`).
        domains: Built-in names or ``{name: items}`` (see
            :func:`~sts_lightning.data.examples.resolve_domains`).
        train_examples: The fine-tuning data, or a function returning it: called once the SAE
            and domains are loaded, so that their errors are reported first.
        device: Where the SAE goes (the model's device).
        heldout_items: Held-out items per built-in domain.
        predict_config: Forecast settings.
        tracker_config: Tracking settings.
        evaluator: Replaces the held-out loss deltas (no held-out set is kept then).
        prediction: A forecast made earlier, used instead of computing one.
    """
    from sts_lightning.model.sae import load_sae

    loaded = load_sae(sae, device=device)
    scored, heldout = resolve_domains(domains, heldout_items)
    train = train_examples() if callable(train_examples) else train_examples
    return STSTracker(
        loaded,
        train,
        scored,
        None if evaluator else heldout,
        predict_config,
        tracker_config,
        evaluator,
        prediction=prediction,
    )

"""sts_lightning: the SAE-based Transferability Score for Lightning and HF/TRL fine-tuning.

The math (``functional``), streaming statistics and the correlation metric import eagerly; the
heavier entry points (Lightning/TRL callbacks, the predictor, trainers) import on first use, so
``import sts_lightning`` stays cheap and never pulls sae-lens or trl by itself.
"""

from __future__ import annotations

import importlib
from typing import Any

from sts_lightning import functional
from sts_lightning.metric import TransferabilityCorrelation
from sts_lightning.stats import LatentMoments, PairedShift

__version__ = "0.1.0"

# name -> module that defines it, imported lazily (PEP 562).
_LAZY = {
    "STSCallback": "sts_lightning.callbacks",
    "STSTrainerCallback": "sts_lightning.hf",
    "STSTracker": "sts_lightning.monitor.tracker",
    "TrackerConfig": "sts_lightning.monitor.tracker",
    "predict": "sts_lightning.forecast.predict",
    "predict_many": "sts_lightning.forecast.compare",
    "Prediction": "sts_lightning.forecast.prediction",
    "PredictConfig": "sts_lightning.forecast.config",
    "Example": "sts_lightning.data.prompts",
    "load_sae": "sts_lightning.model.sae",
    "train_sae": "sts_lightning.model.sae_training",
    "SAETrainConfig": "sts_lightning.model.sae_training",
    "residual_stream": "sts_lightning.model.capture",
}

__all__ = [
    "LatentMoments",
    "PairedShift",
    "TransferabilityCorrelation",
    "__version__",
    "functional",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module 'sts_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

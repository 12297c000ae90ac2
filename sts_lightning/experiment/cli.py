"""``sts-lightning experiment`` arguments: an :class:`ExperimentConfig` from a recipe and
overrides."""

from __future__ import annotations

from pathlib import Path

from sts_lightning.experiment.config import ExperimentConfig
from sts_lightning.forecast.recipe import dataclass_parser, load_recipe

__all__ = ["experiment_parser", "load_experiment"]


def load_experiment(recipe: str | Path, *overrides: str) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a recipe file and ``--key value`` overrides."""
    return load_recipe(experiment_parser(), ExperimentConfig, recipe, *overrides)


def experiment_parser():
    """The argument parser; recipes (``recipes/experiment_*.yaml``) are its ``--config`` files."""
    return dataclass_parser(
        ExperimentConfig,
        "sts-lightning experiment",
        "Forecast (STS), fine-tune, measure realised per-domain change, report.",
        "a recipes/experiment_*.yaml",
    )

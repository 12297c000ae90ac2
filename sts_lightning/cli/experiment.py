"""``sts-lightning experiment``: forecast, fine-tune, measure realised per-domain change, report.

Its arguments are an :class:`~sts_lightning.experiment.config.ExperimentConfig` from a recipe
(``recipes/experiment_*.yaml``) and overrides.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sts_lightning.cli.parser import parse_job
from sts_lightning.experiment.config import ExperimentConfig
from sts_lightning.forecast.recipe import dataclass_parser, load_recipe

__all__ = ["experiment_parser", "load_experiment", "run"]


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


def run(argv: list[str]) -> int:
    """Run ``sts-lightning experiment ARGS``; prints where the report was written."""
    from sts_lightning.experiment.run import run_experiment

    job, out = parse_job(experiment_parser(), ExperimentConfig, argv, "output_dir")
    results = run_experiment(job)
    sys.stdout.write(
        f"wrote {out}/report.md, results.json and figures in {results['timings']['total']:.0f} s\n"
    )
    return 0

"""``sts-lightning experiment`` arguments: an :class:`ExperimentJob` from a recipe + overrides."""

from __future__ import annotations

from pathlib import Path

from sts_lightning.experiment.config import ExperimentJob

__all__ = ["experiment_parser", "job_from_args", "load_experiment"]


def experiment_parser():
    """The argument parser; recipes (``recipes/experiment_*.yaml``) are its ``--config`` files."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="sts-lightning experiment",
        description="Forecast (STS), fine-tune, measure realised per-domain change, report.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a recipes/experiment_*.yaml")
    parser.add_class_arguments(ExperimentJob, None, fail_untyped=True)
    return parser


def job_from_args(parser, cfg) -> ExperimentJob:
    """Instantiate the parsed namespace as an :class:`ExperimentJob`."""
    fields = {k: v for k, v in vars(parser.instantiate(cfg)).items() if k != "config"}
    return ExperimentJob(**fields)


def load_experiment(recipe: str | Path, *overrides: str) -> ExperimentJob:
    """An :class:`ExperimentJob` from a recipe file and ``--key value`` overrides."""
    parser = experiment_parser()
    return job_from_args(parser, parser.parse_args(["--config", str(recipe), *overrides]))

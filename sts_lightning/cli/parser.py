"""What every ``sts-lightning`` subcommand parses with: one place for prog names and recipes.

A recipe-driven subcommand (``predict``, ``experiment``) parses its arguments into its settings
dataclass with :func:`parse_job`, which also writes the resolved settings beside the results
(so a run can be repeated exactly); a subcommand of plain actions (``recipes``) and the entry
point build an ``argparse`` parser with :func:`command_parser`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["PROG", "command_parser", "parse_job"]

PROG = "sts-lightning"
"""The command's name, as ``--help`` and errors print it."""

T = TypeVar("T")


def command_parser(subcommand: str | None, description: str | None) -> argparse.ArgumentParser:
    """An ``argparse`` parser named ``sts-lightning [subcommand]``.

    Example:
        >>> command_parser("recipes", "List recipes.").prog
        'sts-lightning recipes'
    """
    prog = PROG if subcommand is None else f"{PROG} {subcommand}"
    return argparse.ArgumentParser(prog=prog, description=description)


def parse_job(parser: Any, cls: type[T], argv: Sequence[str], output_dir: str) -> tuple[T, Path]:
    """Parse ``argv`` (a recipe and overrides) into ``cls``; write the resolved settings.

    Args:
        parser: The subcommand's ``jsonargparse`` parser over ``cls``'s fields
            (:func:`~sts_lightning.forecast.recipe.dataclass_parser`).
        cls: The settings dataclass.
        argv: The subcommand's arguments.
        output_dir: The field of ``cls`` naming the run's output directory.

    Returns:
        ``(settings, output directory)``, the resolved settings written there as
        ``config.yaml``.
    """
    from sts_lightning.forecast.recipe import parse_dataclass, save_resolved

    job, namespace = parse_dataclass(parser, cls, list(argv))
    # The resolved recipe beside the results: the run can be repeated exactly.
    return job, save_resolved(parser, namespace, getattr(job, output_dir))

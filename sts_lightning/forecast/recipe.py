"""Recipes: a subcommand's arguments are the fields of one dataclass, read by jsonargparse.

``sts-lightning predict`` and ``sts-lightning experiment`` (and ``load_job`` /
``load_experiment`` in the library) build, parse and record their settings the same way:
every field is a ``--flag`` (nested dataclasses as ``--group.field``), a recipe is a
``--config`` file of the same keys, and the resolved settings are written beside the results
so that a run can be repeated exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

__all__ = ["dataclass_parser", "load_recipe", "parse_dataclass", "save_resolved"]

T = TypeVar("T")


def dataclass_parser(cls: type, prog: str, description: str, config_help: str) -> ArgumentParser:
    """A parser whose arguments are the fields of the dataclass ``cls``, plus ``--config``.

    Args:
        cls: The settings dataclass; unknown or untyped fields are errors.
        prog: The command, as ``--help`` shows it.
        description: The command's one-line description.
        config_help: Help of ``--config`` (which recipe files it takes).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser  # lazy: only subcommands need it

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help=config_help)
    parser.add_class_arguments(cls, None, fail_untyped=True)
    return parser


def parse_dataclass(
    parser: ArgumentParser, cls: type[T], argv: Sequence[str]
) -> tuple[T, Namespace]:
    """Parse ``argv`` into a ``cls`` instance; also returns the parsed namespace (to save).

    Args:
        parser: From :func:`dataclass_parser` for ``cls``.
        cls: The settings dataclass.
        argv: Command-line arguments (``--config recipe.yaml``, ``--key value`` ...).

    Raises:
        SystemExit: Bad arguments (jsonargparse prints why, exit code 2).
    """
    namespace = parser.parse_args(list(argv))
    fields = {k: v for k, v in vars(parser.instantiate(namespace)).items() if k != "config"}
    return cls(**fields), namespace


def load_recipe(parser: ArgumentParser, cls: type[T], recipe: str | Path, *overrides: str) -> T:
    """A ``cls`` instance from a recipe file and ``--key value`` overrides."""
    return parse_dataclass(parser, cls, ["--config", str(recipe), *overrides])[0]


def save_resolved(parser: ArgumentParser, namespace: Namespace, output_dir: str | Path) -> Path:
    """Write the resolved settings to ``output_dir/config.yaml`` (created); returns the dir.

    Every value is written, defaults and ``None`` included: the file alone repeats the run.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(parser.dump(namespace, skip_none=False))
    return out

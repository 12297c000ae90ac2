"""Recipes: a subcommand's arguments are the fields of one dataclass, read by jsonargparse.

``sts-lightning predict`` and ``sts-lightning experiment`` (and ``load_job`` /
``load_experiment`` in the library) build, parse and record their settings the same way:
every field is a ``--flag`` (nested dataclasses as ``--group.field``), a recipe is a
``--config`` file of the same keys, and the resolved settings are written beside the results
so that a run can be repeated exactly.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser, Namespace

__all__ = [
    "copy_recipe",
    "dataclass_parser",
    "enable_field_docs",
    "list_recipes",
    "load_recipe",
    "one_line",
    "parse_dataclass",
    "recipes_dir",
    "save_resolved",
]

T = TypeVar("T")


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) as one space.

    Example:
        >>> one_line('Parser key "predict.k":\\n  Expected an int.')
        'Parser key "predict.k": Expected an int.'
    """
    return " ".join(str(message).split())


def enable_field_docs() -> None:
    """Make jsonargparse show each dataclass field's docstring in ``--help`` (idempotent)."""
    import jsonargparse

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)


@functools.cache
def _parser_class() -> type:
    """jsonargparse's ``ArgumentParser`` whose errors are one ``error:`` line, exit status 2."""
    from jsonargparse import ArgumentParser

    class OneLineErrors(ArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            if not self.exit_on_error:
                return super().error(message, ex)
            sys.stderr.write(f"error: {one_line(message)} (see {self.prog} --help)\n")
            raise SystemExit(2)

    return OneLineErrors


def dataclass_parser(cls: type, prog: str, description: str, config_help: str) -> ArgumentParser:
    """A parser whose arguments are the fields of the dataclass ``cls``, plus ``--config``.

    Args:
        cls: The settings dataclass; unknown or untyped fields are errors.
        prog: The command, as ``--help`` shows it.
        description: The command's one-line description.
        config_help: Help of ``--config`` (which recipe files it takes).
    """
    from jsonargparse import ActionConfigFile  # lazy: only subcommands need it

    enable_field_docs()
    parser = _parser_class()(prog=prog, description=description)
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
        SystemExit: Bad arguments (one ``error:`` line on stderr says why, exit code 2).
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


def recipes_dir() -> Path:
    """The folder of the shipped recipes: ``sts_lightning/recipes`` in an installed wheel, the
    repository's top-level ``recipes/`` in a checkout (it is packaged from there)."""
    try:
        from importlib.resources import files

        shipped = Path(str(files("sts_lightning.recipes")))
    except ModuleNotFoundError:  # an editable install made before the recipes were packaged
        shipped = Path(__file__).resolve().parents[2] / "recipes"
    return shipped


def list_recipes() -> dict[str, str]:
    """``{name: first line of its header comment}`` of every shipped recipe, sorted by name."""
    out = {}
    for path in sorted(recipes_dir().glob("*.yaml")):
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        out[path.stem] = first.lstrip("# ").strip() if first.startswith("#") else ""
    return out


def copy_recipe(name: str, dest: str | Path = ".") -> Path:
    """Copy the shipped recipe ``name`` (with or without ``.yaml``) to ``dest``; returns the copy.

    Args:
        name: A name from :func:`list_recipes`.
        dest: A directory (the file keeps its name) or a file path.

    Raises:
        ValueError: ``name`` is not a shipped recipe (the available names are listed).
        FileExistsError: The destination file exists (never overwritten).
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    source = recipes_dir() / f"{stem}.yaml"
    if not source.is_file():
        raise ValueError(f"`name`={name!r} is not a shipped recipe; one of {list(list_recipes())}")
    target = Path(dest)
    if target.is_dir():
        target = target / source.name
    if target.exists():
        raise FileExistsError(f"`dest`={str(target)!r} exists; remove it or name another file")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    return target

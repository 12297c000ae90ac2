"""Prompt/answer rows from any training source: built-in sets, JSON lines, HF datasets, lists.

Every source becomes a list of rows ``{"prompt": str, "answer": str, **other_columns}``, the
common currency of :mod:`sts_lightning.training.data` (SFT pairs and GRPO prompts alike).
A source is:

- a built-in training set name (:data:`~sts_lightning.data.domains.TRAINING_SETS`, e.g.
  ``"arithmetic"``), drawn with :func:`~sts_lightning.data.domains.load_training_set`;
- a ``.jsonl`` file of JSON objects;
- anything else ``datasets.load_dataset`` accepts: a hub name (``"GAIR/LIMO"``), a local dataset
  directory, or a ``.json`` / ``.csv`` / ``.parquet`` file;
- an in-memory list of :class:`~sts_lightning.data.prompts.Example` or of dicts.

``prompt_column`` / ``answer_column`` name the columns of files and datasets; they are renamed to
``prompt`` / ``answer`` and every other column is kept as is.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sts_lightning.data.domains import TRAINING_SETS, load_training_set
from sts_lightning.data.prompts import Example

__all__ = ["is_hf_source", "load_rows", "read_examples"]

log = logging.getLogger(__name__)

# Files read by `datasets` with the builder of their suffix; `.jsonl` is read here (no import).
_HF_FILE_BUILDERS = {".json": "json", ".csv": "csv", ".parquet": "parquet"}


def is_hf_source(source: Any) -> bool:
    """Whether ``source`` is read by ``datasets.load_dataset`` (a hub name, directory or file).

    Example:
        >>> is_hf_source("arithmetic"), is_hf_source("GAIR/LIMO"), is_hf_source("a.jsonl")
        (False, True, False)
    """
    if not isinstance(source, str):
        return False
    return source not in TRAINING_SETS and Path(source).suffix != ".jsonl"


def _load_hf(source: str, *, split: str, subset: str | None, data_files: Any) -> list[dict]:
    import datasets  # lazy: ~2 s of imports, only for HF sources

    builder = _HF_FILE_BUILDERS.get(Path(source).suffix)
    if builder is not None and Path(source).is_file():
        dataset = datasets.load_dataset(builder, data_files=source, split=split)
    else:
        dataset = datasets.load_dataset(source, name=subset, split=split, data_files=data_files)
    return list(dataset)


def _json_objects(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line of a JSON-lines file."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: not a JSON object: {err}") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            rows.append((i, row))
    return rows


def read_examples(path: str | Path) -> list[Example]:
    """The examples of a JSON-lines file of ``{"prompt": ..., "answer"?: ...}`` objects.

    Blank lines are skipped; other keys are ignored.

    Raises:
        ValueError: A line that is not a JSON object or has no ``"prompt"`` (file and line named).
    """
    examples = []
    for i, row in _json_objects(path):
        if "prompt" not in row:
            raise ValueError(
                f"{path}:{i}: expected a JSON object with a 'prompt', got keys {sorted(row)}"
            )
        examples.append(Example(row["prompt"], row.get("answer")))
    return examples


def _rename(
    raw: Sequence[Mapping[str, Any]],
    where: str,
    prompt_column: str,
    answer_column: str | None,
) -> list[dict[str, Any]]:
    rows = []
    for i, row in enumerate(raw):
        for arg, column in (("prompt_column", prompt_column), ("answer_column", answer_column)):
            if column is not None and column not in row:
                raise ValueError(
                    f"`{arg}`={column!r} is not a column of {where} (row {i} has columns "
                    f"{sorted(row)}); set `{arg}` to one of them"
                )
        out = {k: v for k, v in row.items() if k not in (prompt_column, answer_column)}
        out["prompt"] = str(row[prompt_column])
        if answer_column is not None and row[answer_column] is not None:
            out["answer"] = str(row[answer_column])
        rows.append(out)
    return rows


def load_rows(
    source: str | Sequence[Example | Mapping[str, Any]],
    *,
    size: int | None = None,
    seed: int = 0,
    split: str = "train",
    subset: str | None = None,
    data_files: str | list[str] | None = None,
    prompt_column: str = "prompt",
    answer_column: str | None = "answer",
    argument: str = "train",
) -> list[dict[str, Any]]:
    """Rows ``{"prompt", "answer", **other_columns}`` of a source (see the module docstring).

    Args:
        source: Built-in set name, ``.jsonl`` path, ``datasets`` name / directory / file, or a
            list of :class:`Example` or dicts.
        size: Rows to keep, a seeded random subset (``None``: all). Built-in sets are generated
            with exactly this many rows and need it.
        seed: Seed of the built-in generator and of the subset.
        split: ``datasets`` split.
        subset: ``datasets`` configuration name.
        data_files: ``datasets`` ``data_files`` (for builders such as ``"json"``).
        prompt_column: Column holding the user prompt.
        answer_column: Column holding the answer; ``None`` for prompts without answers.
        argument: The caller's argument name, for error messages.

    Returns:
        The rows; built-in sets also carry ``"task"`` (the set name, for reward functions).

    Raises:
        ValueError: An empty source, a missing column (named, with the available ones), or a
            ``size`` larger than the source.

    Example:
        >>> load_rows([Example("2+2?", "4"), {"prompt": "3+3?", "answer": 6, "id": 7}])
        [{'prompt': '2+2?', 'answer': '4'}, {'id': 7, 'prompt': '3+3?', 'answer': '6'}]
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"`{argument}_size` must be a positive int or None, got {size!r}")
    if isinstance(source, str) and source in TRAINING_SETS:
        if size is None:
            raise ValueError(f"`{argument}_size` must be set for the built-in set {source!r}")
        examples = load_training_set(source, size, seed=seed)
        return [{"prompt": e.prompt, "answer": e.answer, "task": source} for e in examples]
    if isinstance(source, str):
        if Path(source).suffix == ".jsonl":
            raw, where = [row for _, row in _json_objects(source)], f"{source}"
        else:
            raw = _load_hf(source, split=split, subset=subset, data_files=data_files)
            where = f"dataset {source!r} (split {split!r})"
        rows = _rename(raw, where, prompt_column, answer_column)
    elif isinstance(source, Sequence):
        rows = []
        for i, item in enumerate(source):
            where = f"`{argument}` item {i}"
            if isinstance(item, Example):
                answer = None if answer_column is None else "answer"
                rows += _rename(
                    [{"prompt": item.prompt, "answer": item.answer}], where, "prompt", answer
                )
            elif isinstance(item, Mapping):
                rows += _rename([item], where, prompt_column, answer_column)
            else:
                raise TypeError(f"{where} must be an Example or a dict, got {type(item)}")
    else:
        raise TypeError(f"`{argument}` must be a name, a path or a list, got {type(source)}")
    if not rows:
        raise ValueError(f"`{argument}`={_short(source)} has no rows")
    if size is not None:
        if size > len(rows):
            raise ValueError(
                f"`{argument}_size` must be <= {len(rows)}, the rows of {_short(source)}; "
                f"got {size}"
            )
        rows = [rows[i] for i in random.Random(seed).sample(range(len(rows)), size)]
    return rows


def _short(source: Any) -> str:
    return (
        repr(source) if isinstance(source, str) else f"<{type(source).__name__} of {len(source)}>"
    )

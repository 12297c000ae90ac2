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

Each row may be in any of TRL's dataset formats (read by
:mod:`~sts_lightning.data.row_reader`, the one row reader): ``{"prompt", "answer"?}``,
``{"prompt", "completion"?}`` with plain strings or conversational message lists
(``[{"role": "user", "content": ...}]``), ``{"messages"}`` (one user turn and the assistant's
answer) or ``{"text"}``. ``prompt_column`` / ``answer_column`` name the prompt and answer
columns (``completion`` is read when there is no ``answer``); they become ``prompt`` (the user
turn's text, never a stringified message list; with ``keep_conversational``, for GRPO, a
conversational prompt stays its message list, system turns included) and ``answer``; every
other column is kept. A value of the wrong shape raises a ``ValueError`` naming the row and the
field; so does a conversation with earlier turns, which an :class:`Example` cannot hold.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sts_lightning.data.domains import TRAINING_SETS, load_training_set
from sts_lightning.data.prompts import Example
from sts_lightning.data.row_reader import conversational_prompt, example_from_columns

__all__ = ["is_hf_source", "load_rows", "read_examples"]

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


def _load_hf(
    source: str, *, split: str, subset: str | None, data_files: Any, argument: str
) -> list[dict]:
    import datasets  # lazy: ~2 s of imports, only for HF sources

    builder = _HF_FILE_BUILDERS.get(Path(source).suffix)
    if builder is not None and Path(source).is_file():
        dataset = datasets.load_dataset(builder, data_files=source, split=split)
    else:
        try:
            dataset = datasets.load_dataset(source, name=subset, split=split, data_files=data_files)
        except (FileNotFoundError, ConnectionError) as err:  # DatasetNotFoundError included
            # Say what a source can be (the cause, "Couldn't reach ... on the Hub", is chained).
            raise ValueError(
                f"`{argument}`={source!r} is not a built-in task, file or reachable dataset "
                f"(built-in tasks: {sorted(TRAINING_SETS)}; a dataset: a hub name or a local "
                "directory)"
            ) from err
    return list(dataset)


def _json_objects(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line of a JSON-lines file."""
    rows = []
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file (a JSON-lines file of examples expected)")
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
    """The examples of a JSON-lines file, one row per line in any format of :func:`load_rows`.

    Blank lines are skipped; other keys are ignored.

    Raises:
        ValueError: A line that is not a JSON object, has none of the formats, or holds a value
            of the wrong shape (file, line and field named).
    """
    return [
        example_from_columns(row, f"{path}:{i}", "prompt", "answer", answer_required=False)
        for i, row in _json_objects(path)
    ]


def _rename(
    raw: Sequence[tuple[str, Mapping[str, Any]]],
    prompt_column: str,
    answer_column: str | None,
    keep_conversational: bool = False,
    answer_required: bool = True,
) -> list[dict[str, Any]]:
    """Rows ``{"prompt", "answer"?, **others}`` of ``(where, row)``; format columns dropped."""
    used = {prompt_column, answer_column, "completion", "messages", "text"}
    rows = []
    for where, row in raw:
        chat = conversational_prompt(row, prompt_column, where) if keep_conversational else None
        if chat is not None:  # the answer is read as for the last user turn alone
            row = {**row, prompt_column: [[m for m in chat if m["role"] == "user"][-1]]}
        example = example_from_columns(
            row, where, prompt_column, answer_column, answer_required=answer_required
        )
        out = {k: v for k, v in row.items() if k not in used}
        out["prompt"] = example.prompt if chat is None else chat
        if example.answer is not None:
            out["answer"] = example.answer
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
    keep_format: bool = False,
    keep_conversational: bool = False,
    answer_required: bool = True,
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
        keep_format: Return file, dataset and dict rows as they are (any SFT format, multi-turn
            conversations too; :mod:`~sts_lightning.data.sft_format` reads them); built-in sets
            and :class:`Example` items still become ``{"prompt", "answer"}``.
        keep_conversational: Keep a conversational prompt as its message list (TRL's GRPO
            prompts; system and earlier turns kept); ``False``: its last user turn's text.
        answer_required: A row without ``answer_column`` is an error; ``False``: a prompt
            without answer (TRL's prompt-only format, other columns kept).

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
            raw = [(f"{source}:{i}", row) for i, row in _json_objects(source)]
        else:
            loaded = _load_hf(
                source, split=split, subset=subset, data_files=data_files, argument=argument
            )
            raw = [
                (f"dataset {source!r} (split {split!r}) row {i}", r) for i, r in enumerate(loaded)
            ]
        columns = (prompt_column, answer_column, keep_conversational, answer_required)
        rows = [dict(r) for _, r in raw] if keep_format else _rename(raw, *columns)
    elif isinstance(source, Sequence):
        rows = []
        for i, item in enumerate(source):
            where = f"`{argument}` item {i}"
            if isinstance(item, Example):
                keep = item.answer is not None and answer_column is not None
                rows.append({"prompt": item.prompt, **({"answer": item.answer} if keep else {})})
            elif isinstance(item, Mapping):
                columns = (prompt_column, answer_column, keep_conversational, answer_required)
                rows += [dict(item)] if keep_format else _rename([(where, item)], *columns)
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

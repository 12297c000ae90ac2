"""SFT rows in any TRL dataset format → token ids and the labels that carry the loss.

A row's format is read from its columns, the first match winning:

1. ``{prompt_column, answer_column}`` (``prompt`` / ``answer``, e.g. the built-in sets): one user
   turn and the assistant's answer through the chat template
   (:func:`~sts_lightning.data.prompts.encode_example`); loss on the answer and the end-of-turn
   token closing it.
2. ``{"messages": [...]}``, TRL's conversational language modeling: the whole conversation
   through the chat template; loss on every token, or with ``assistant_only_loss`` on every
   assistant turn.
3. ``{"prompt", "completion"}``, TRL's prompt-completion: plain strings are tokenized as text
   (``prompt + completion + EOS``, no template), message lists through the chat template (the
   prompt with the generation prompt, then prompt + completion). Loss on the completion tokens
   (``completion_only_loss`` ``None`` or True, TRL's default), else on every token.
4. ``{dataset_text_field}`` (``text``), TRL's language modeling: ``text + EOS``, loss on every
   token.

As in TRL's ``SFTTrainer``, the completion starts where the tokenized prompt and the tokenized
whole stop agreeing (a template that renders the prompt alone differently moves it).

Assistant tokens are found without ``{% generation %}`` markers in the template
(:func:`~sts_lightning.data.chat_masks.assistant_mask`).

Sequences longer than ``max_length`` lose their end (TRL's ``truncation_mode="keep_start"``); a
row left without a trained token is dropped with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sts_lightning.config import at_least, positive_int
from sts_lightning.data.chat_masks import assistant_mask, chat_ids, common_prefix_length
from sts_lightning.data.prompts import Example, encode_example
from sts_lightning.data.row_reader import example_fields, example_from_row
from sts_lightning.data.row_reader import row_format as read_format

__all__ = ["SFTFormat", "encode_row", "row_format", "tokenize_rows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTFormat:
    """How SFT rows become tokens and labels; the loss settings carry TRL ``SFTConfig``'s names."""

    max_length: int = 512
    """Tokens kept of each sequence (its start); with packing, also the length of a packed row."""
    completion_only_loss: bool | None = None
    """Loss on the completion (answer) only; ``None``: on prompt-completion rows, as TRL."""
    assistant_only_loss: bool = False
    """Loss on assistant turns only (conversational rows)."""
    dataset_text_field: str = "text"
    """Column of language-modeling rows."""
    prompt_column: str = "prompt"
    """Prompt column of (prompt, answer) pairs."""
    answer_column: str = "answer"
    """Answer column of (prompt, answer) pairs."""
    system_prompt: str | None = None
    """(prompt, answer) pairs: ``None``: the template's default; a string: a system turn."""
    label_end_of_turn: bool = True
    """(prompt, answer) pairs: also train on the end-of-turn token closing the answer."""

    def __post_init__(self) -> None:
        positive_int("max_length", self.max_length)
        at_least("max_length", self.max_length, 2)
        if self.completion_only_loss not in (None, True, False):
            raise ValueError(
                f"`completion_only_loss` must be None, True or False, got "
                f"{self.completion_only_loss!r}"
            )
        if not isinstance(self.assistant_only_loss, bool):
            raise ValueError(
                f"`assistant_only_loss` must be a bool, got {self.assistant_only_loss}"
            )
        for name in ("dataset_text_field", "prompt_column", "answer_column"):
            if not isinstance(value := getattr(self, name), str) or not value:
                raise ValueError(f"`{name}` must be a non-empty string, got {value!r}")


def row_format(row: Any, fmt: SFTFormat, where: str = "row") -> str:
    """The format of ``row`` with ``fmt``'s columns
    (:func:`~sts_lightning.data.row_reader.row_format`).

    Example:
        >>> row_format({"prompt": "2+2?", "completion": " 4"}, SFTFormat())
        'prompt_completion'
    """
    columns = (fmt.prompt_column, fmt.answer_column, fmt.dataset_text_field)
    return read_format(row, *columns, where=where)


def _messages(value: Any, where: str) -> list:
    ok = isinstance(value, list) and value
    if not ok or not all(isinstance(m, Mapping) and "role" in m for m in value):
        raise ValueError(f"{where}: expected a non-empty list of {{'role', 'content'}} messages")
    return value


def _text(value: Any, where: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a numeric answer column
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__} {value!r:.60}")
    return value


def _with_eos(tokenizer, text: str) -> str:
    # TRL appends EOS to non-conversational texts and completions, so the model learns to stop.
    eos = tokenizer.eos_token
    return text if not eos or text.endswith(eos) else text + eos


def _pair_example(row: Mapping[str, Any], fmt: SFTFormat, where: str) -> Example:
    prompt, answer = row[fmt.prompt_column], row[fmt.answer_column]
    if answer is None:
        raise ValueError(f"{where} has no answer: SFT needs (prompt, answer) pairs")
    answer = _text(answer, f"{where} column {fmt.answer_column!r}")
    if isinstance(prompt, list):  # a conversational prompt: the answer is the assistant turn
        answer = [{"role": "assistant", "content": answer}]
    else:
        prompt = _text(prompt, f"{where} column {fmt.prompt_column!r}")
    return example_from_row({"prompt": prompt, "completion": answer}, where=where)


def _pair(tokenizer, row, fmt: SFTFormat, where: str) -> tuple[list[int], list[bool]]:
    example = _pair_example(row, fmt, where)
    enc = encode_example(tokenizer, example, system_prompt=fmt.system_prompt)
    ids, (start, end) = enc.input_ids, enc.answer_span
    if fmt.label_end_of_turn and end < len(ids) and ids[end] in set(tokenizer.all_special_ids):
        end += 1  # `<|im_end|>` / `<|eot_id|>`: without it the model never learns to stop
    if fmt.completion_only_loss is False and not fmt.assistant_only_loss:
        start, end = 0, len(ids)
    return ids, [start <= k < end for k in range(len(ids))]


def _prompt_completion(tokenizer, row, fmt: SFTFormat, where: str):
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list):
        prompt = _messages(prompt, f"{where} field 'prompt'")
        conversation = prompt + _messages(completion, f"{where} field 'completion'")
        prompt_ids = chat_ids(tokenizer, prompt, add_generation_prompt=True)
        ids = chat_ids(tokenizer, conversation)
    else:
        conversation = None
        text = _text(prompt, f"{where} field 'prompt'")
        prompt_ids = list(tokenizer(text)["input_ids"])
        completion = _with_eos(tokenizer, _text(completion, f"{where} field 'completion'"))
        ids = list(tokenizer(text + completion)["input_ids"])
    start = common_prefix_length(prompt_ids, ids) if fmt.completion_only_loss is not False else 0
    mask = [k >= start for k in range(len(ids))]
    if fmt.assistant_only_loss:
        assistant = assistant_mask(tokenizer, conversation, ids)
        mask = [a and b for a, b in zip(mask, assistant, strict=True)]
    return ids, mask


def encode_row(tokenizer, row: Mapping[str, Any], fmt: SFTFormat, where: str = "row"):
    """``(input_ids, mask)`` of one row, untruncated; ``mask[t]``: token ``t`` carries loss.

    Raises:
        ValueError: A row in no format, a field of the wrong type, or a loss setting the format
            does not support (``completion_only_loss=True`` without a completion,
            ``assistant_only_loss=True`` on a plain-text row, a conversation without assistant
            turn).
    """
    kind = row_format(row, fmt, where)
    conversational = kind in ("pair", "messages") or (
        kind == "prompt_completion" and isinstance(row["prompt"], list)
    )
    if fmt.assistant_only_loss and not conversational:
        raise ValueError(
            f"`assistant_only_loss`=True needs conversational rows, but {where} is plain text "
            f"(columns {sorted(row)}); set it to False or use 'messages'"
        )
    if fmt.completion_only_loss and kind in ("messages", "text"):
        raise ValueError(
            f"`completion_only_loss`=True needs prompt-completion rows, but {where} has no "
            f"completion (columns {sorted(row)}); set it to None or False"
        )
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"`tokenizer` has no chat template, which {where} (conversational) needs")
    if kind == "pair":
        ids, mask = _pair(tokenizer, row, fmt, where)
    elif kind == "prompt_completion":
        ids, mask = _prompt_completion(tokenizer, row, fmt, where)
    elif kind == "messages":
        messages = _messages(row["messages"], f"{where} field 'messages'")
        ids = chat_ids(tokenizer, messages)
        mask = assistant_mask(tokenizer, messages, ids) if fmt.assistant_only_loss else None
        mask = [True] * len(ids) if mask is None else mask
    else:
        text = _text(row[fmt.dataset_text_field], f"{where} field {fmt.dataset_text_field!r}")
        ids = list(tokenizer(_with_eos(tokenizer, text))["input_ids"])
        mask = [True] * len(ids)
    if fmt.assistant_only_loss and not any(mask):
        raise ValueError(f"{where} has no assistant turn to train on (`assistant_only_loss`=True)")
    return ids, mask


def _example(row: Mapping[str, Any], fmt: SFTFormat) -> dict[str, Any]:
    """What a tokenized item carries of its row
    (:func:`~sts_lightning.data.row_reader.example_fields`).

    Callbacks that read training examples from the dataset (the STS forecast) read these with
    the one row reader, so a conversation with earlier turns is refused there as everywhere.
    """
    kind = row_format(row, fmt)
    try:
        if kind == "pair":
            example = _pair_example(row, fmt, "row")
        elif kind == "text":
            example = Example(row[fmt.dataset_text_field])
        else:
            example = example_from_row(row)
    except ValueError:  # a prompt with earlier turns, no user turn, non-text content...
        if kind == "pair":
            row = {"prompt": row[fmt.prompt_column], "answer": row[fmt.answer_column]}
        return example_fields(row, None)
    return example_fields(row, example)


def tokenize_rows(
    tokenizer, rows: Sequence[Mapping[str, Any]], fmt: SFTFormat, *, where: str = "`train`"
) -> list[dict[str, Any]]:
    """``{"input_ids", "labels", "prompt"?, "answer"?}`` per row, cut to ``fmt.max_length``.

    ``labels`` is ``input_ids`` where the token carries loss and ``-100`` elsewhere (unshifted).
    A row that truncation leaves without a trained token (position 0 is never predicted) is
    dropped with a warning. ``prompt`` / ``answer`` come along when the row is one exchange,
    the row's format columns when it is not
    (:func:`~sts_lightning.data.row_reader.example_fields`).

    Raises:
        ValueError: No rows, a row in no format (see :func:`encode_row`), or ``max_length``
            leaving no trained token in any row.
    """
    if not rows:
        raise ValueError(f"{where} has no rows")
    items, dropped, first = [], 0, []
    for i, row in enumerate(rows):
        ids, mask = encode_row(tokenizer, row, fmt, where=f"row {i} of {where}")
        first.append(next((k for k in range(1, len(mask)) if mask[k]), len(mask)))
        ids, mask = ids[: fmt.max_length], mask[: fmt.max_length]
        if not any(mask[1:]):
            dropped += 1
            continue
        labels = [t if m else -100 for t, m in zip(ids, mask, strict=True)]
        items.append({"input_ids": ids, "labels": labels, **_example(row, fmt)})
    if not items:
        raise ValueError(
            f"`max_length`={fmt.max_length} truncates every answer of {where}: the trained tokens "
            f"start at token {min(first)} or later; raise `max_length` above {min(first)}"
        )
    if dropped:
        log.warning(
            "%s: %d of %d rows dropped, no trained token within `max_length`=%d",
            where,
            dropped,
            len(rows),
            fmt.max_length,
        )
    return items

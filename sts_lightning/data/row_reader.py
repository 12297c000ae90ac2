"""The one row reader: what format a row is in, and how it becomes an :class:`Example`.

Every place rows enter reads them here: training sources (:mod:`~sts_lightning.data.sources`),
SFT tokenization (:mod:`~sts_lightning.data.sft_format`) and both STS callbacks, which take
their training examples from the dataset they train on. A row is in one of TRL's dataset
formats:

- ``{"text"}``: a plain text (a prompt without answer);
- ``{"messages"}``: a conversation; the last user turn is the prompt, an assistant turn after it
  the answer;
- ``{"prompt", "completion"?}``: plain strings or conversational message lists;
- ``{"prompt", "answer"?}``: the built-in sets' pairs (a conversational prompt may have a plain
  answer).

An :class:`Example` holds one user turn and its answer, nothing before it. A conversation with
earlier turns (a system turn, a previous exchange) is refused, everywhere, with a message naming
the field and asking for ``train_examples=``: the STS forecast never silently drops context.
Explicit items (:func:`as_examples`, what a user passes as ``train_examples=`` or a domain) are
taken as given: a conversational prompt gives its last user turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sts_lightning.data.prompts import Example

__all__ = [
    "ROW_COLUMNS",
    "as_examples",
    "conversational_prompt",
    "dataset_examples",
    "example_fields",
    "example_from_columns",
    "example_from_row",
    "examples_from_rows",
    "has_row_format",
    "row_format",
]

ROW_COLUMNS = ("messages", "prompt", "completion", "answer", "text")
"""The columns :func:`example_from_row` reads (a tokenized item carries them along)."""

_ROW_FORMATS = (
    '{"text"}, {"messages"}, {"prompt", "completion"?} (plain or conversational) or '
    '{"prompt", "answer"?}'
)


def row_format(
    row: Any,
    prompt_column: str = "prompt",
    answer_column: str = "answer",
    text_field: str = "text",
    where: str = "row",
) -> str:
    """``"pair"``, ``"messages"``, ``"prompt_completion"`` or ``"text"``: the format of ``row``.

    The first match wins: ``{prompt_column, answer_column}``, ``{"messages"}``,
    ``{"prompt", "completion"}``, ``{text_field}``.

    Raises:
        ValueError: A row in none of the formats (its columns and the expected ones named).

    Example:
        >>> row_format({"prompt": "2+2?", "completion": " 4"})
        'prompt_completion'
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(row).__name__}")
    if prompt_column in row and answer_column in row:
        return "pair"
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if text_field in row:
        return "text"
    expected = (
        f"'messages' (conversational), 'prompt' + 'completion', {text_field!r} "
        f"(`dataset_text_field`) or {prompt_column!r} + {answer_column!r} "
        "(`prompt_column` + `answer_column`)"
    )
    if prompt_column in row:
        raise ValueError(
            f"{where} has no answer: SFT needs a completion or an answer; expected {expected}, "
            f"got the columns {sorted(row)}"
        )
    raise ValueError(f"{where}: expected the columns {expected}, got the columns {sorted(row)}")


def _content(message: Any, where: str) -> tuple[str, str]:
    """``(role, text)`` of one ``{"role", "content"}`` message (content: text or text parts)."""
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise ValueError(f"{where}: expected a {{'role', 'content'}} message, got {message!r}")
    content = message["content"]
    if isinstance(content, list):  # multimodal-style parts: only text parts carry text
        texts = [p.get("text") for p in content if isinstance(p, Mapping)]
        if not texts or any(p.get("type") != "text" for p in content):
            raise ValueError(f"{where}: only text content is supported, got {content!r}")
        content = "".join(texts)
    if not isinstance(content, str):
        raise ValueError(f"{where}: 'content' must be a string, got {type(content).__name__}")
    return str(message["role"]), content


def _turns(messages: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {messages!r}")
    return [_content(m, f"{where}[{i}]") for i, m in enumerate(messages)]


def _conversation(prompt: list, completion: list, where: str) -> Example:
    """The example of one user turn and the assistant's answer; earlier turns raise."""
    if len(prompt) != 1 or prompt[0][0] != "user":
        roles = [role for role, _ in prompt]
        raise ValueError(
            f"{where}: an Example carries one user turn and its answer, but the conversation "
            f"before the answer has the turns {roles}; earlier turns (system, user, assistant) "
            "would be dropped. Pass `train_examples=` explicitly or keep one user turn per row"
        )
    if completion and (len(completion) != 1 or completion[0][0] != "assistant"):
        roles = [role for role, _ in completion]
        raise ValueError(f"{where}: the answer must be one assistant turn, got the turns {roles}")
    return Example(prompt[0][1], completion[0][1] if completion else None)


def _strip(text: str, suffix: str | None) -> str:
    return text[: -len(suffix)] if suffix and text.endswith(suffix) else text


def example_from_row(
    row: Mapping[str, Any], *, where: str = "row", eos_token: str | None = None
) -> Example:
    """The :class:`Example` of one training row in any TRL dataset format.

    Formats: ``{"text"}`` (a plain text), ``{"messages"}`` (the last user turn is the prompt,
    an assistant turn after it the answer), ``{"prompt", "completion"?}`` with plain strings or
    conversational message lists, and ``{"prompt", "answer"?}`` (a conversational prompt may
    have a plain answer). A conversational prompt is never stringified: its single user turn's
    content is the prompt. An ``Example`` has no place for earlier turns (a system turn, a
    previous exchange), so a row with them raises.

    Args:
        row: One dataset row; other columns (``input_ids`` of a tokenized dataset…) are ignored.
        where: Names the row in errors (e.g. ``"`train_dataset` row 3"``).
        eos_token: Removed from the end of a plain text or completion (``SFTTrainer`` appends
            it to non-conversational rows of its prepared ``train_dataset``).

    Raises:
        ValueError: A row in none of the formats, a field of the wrong type, or a conversation
            with earlier turns (the field is named).

    Example:
        >>> example_from_row({"messages": [{"role": "user", "content": "2+2?"},
        ...                                {"role": "assistant", "content": "4"}]})
        Example(prompt='2+2?', answer='4')
        >>> example_from_row({"prompt": "3+3?", "completion": " 6</s>"}, eos_token="</s>")
        Example(prompt='3+3?', answer=' 6')
    """
    if "messages" in row:
        turns = _turns(row["messages"], f"{where} field 'messages'")
        users = [i for i, (role, _) in enumerate(turns) if role == "user"]
        last = users[-1] if users else 0
        return _conversation(turns[: last + 1], turns[last + 1 :], f"{where} field 'messages'")
    if "prompt" in row:
        prompt, answer = row["prompt"], row.get("completion", row.get("answer"))
        if isinstance(prompt, list):
            field = "completion" if "completion" in row else "answer"
            if field == "answer" and isinstance(answer, str):  # a pair's plain answer
                answer = [{"role": "assistant", "content": answer}]
            completion = [] if answer is None else _turns(answer, f"{where} field {field!r}")
            field = f"{where} field 'prompt'"
            return _conversation(_turns(prompt, field), completion, field)
        if not isinstance(prompt, str) or not (answer is None or isinstance(answer, str)):
            raise ValueError(f"{where}: 'prompt' and its answer must be strings, got {row!r}")
        return Example(prompt, None if answer is None else _strip(answer, eos_token))
    if "text" in row:
        if not isinstance(row["text"], str):
            raise ValueError(f"{where} field 'text' must be a string, got {row['text']!r}")
        return Example(_strip(row["text"], eos_token))
    raise ValueError(f"{where}: expected one of {_ROW_FORMATS}, got the columns {sorted(row)}")


def examples_from_rows(
    rows: Iterable[Mapping[str, Any] | Example],
    *,
    argument: str = "train_dataset",
    eos_token: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """The examples of rows in any TRL dataset format (see :func:`example_from_row`).

    Args:
        rows: Dataset rows (a ``datasets.Dataset``, a list of dicts…); an :class:`Example`
            is taken as it is.
        argument: The caller's argument name, for errors (``"`train_dataset` row 3: ..."``).
        eos_token: Removed from the end of plain texts and completions.
        limit: Read at most this many rows (``None``: all).

    Raises:
        ValueError: A row that is not in a supported format, or no rows.

    Example:
        >>> examples_from_rows([{"text": "a"}, {"prompt": "b", "completion": "c"}])
        [Example(prompt='a', answer=None), Example(prompt='b', answer='c')]
    """
    out = []
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            break
        if isinstance(row, Example):
            out.append(row)
            continue
        if not isinstance(row, Mapping):
            raise ValueError(f"`{argument}` row {i}: expected a dict, got {type(row).__name__}")
        out.append(example_from_row(row, where=f"`{argument}` row {i}", eos_token=eos_token))
    if not out:
        raise ValueError(f"`{argument}` has no rows")
    return out


def has_row_format(item: Any) -> bool:
    """Whether ``item`` is an :class:`Example` or a row with a column :func:`example_from_row`
    reads (a dataset's token-id-only items are not)."""
    return isinstance(item, Example) or (
        isinstance(item, Mapping) and any(c in item for c in ("messages", "prompt", "text"))
    )


def dataset_examples(
    rows: Iterable[Any],
    *,
    caller: str,
    argument: str,
    eos_token: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """The training examples an STS callback reads from the dataset it trains on.

    Both callbacks read rows with :func:`examples_from_rows`, so a row gets the same answer
    from each; a refused row's message also names the way out, ``train_examples=``.

    Args:
        rows: The dataset's rows.
        caller: The callback's name, for errors.
        argument: What the rows are, for errors (``"train_dataset"``).
        eos_token: As in :func:`examples_from_rows`.
        limit: Read at most this many rows.

    Raises:
        ValueError: A row in no format, or a conversation with earlier turns.
    """
    try:
        return examples_from_rows(rows, argument=argument, eos_token=eos_token, limit=limit)
    except ValueError as err:
        raise ValueError(f"{err}; or pass `train_examples=` to {caller}") from err


def as_examples(items: Sequence[Example | str | Mapping]) -> list[Example]:
    """Examples from Examples, plain texts or ``{"prompt", "answer"?}`` dicts, in order.

    Args:
        items: ``n`` items, each an ``Example``, a text (becomes a prompt without answer) or a
            mapping with a ``"prompt"`` and an optional ``"answer"``. A conversational prompt
            (TRL's message list, as GRPO prompt rows keep it) gives its last user turn.

    Returns:
        ``n`` examples.

    Raises:
        KeyError: A mapping has no ``"prompt"``.
        ValueError: A conversational prompt without a user turn.

    Example:
        >>> as_examples(["2 + 2?", {"prompt": "3 + 3?", "answer": "6"}])
        [Example(prompt='2 + 2?', answer=None), Example(prompt='3 + 3?', answer='6')]
        >>> as_examples([{"prompt": [{"role": "system", "content": "Be brief."},
        ...                          {"role": "user", "content": "4 + 4?"}], "answer": "8"}])
        [Example(prompt='4 + 4?', answer='8')]
    """
    out = []
    for i, x in enumerate(items):
        if isinstance(x, Mapping):
            prompt = x["prompt"]
            if isinstance(prompt, list):  # the user text, not a stringified conversation
                users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
                if not users:
                    raise ValueError(f"item {i}: a conversational 'prompt' without a user turn")
                prompt = str(users[-1].get("content") or "")
            x = Example(prompt, x.get("answer"))
        out.append(x if isinstance(x, Example) else Example(str(x)))
    return out


def example_fields(row: Mapping[str, Any], example: Example | None) -> dict[str, Any]:
    """What a tokenized item carries of its row, for a callback reading the dataset.

    ``{"prompt", "answer"?}`` of the row's ``example``, or, for a row the reader refuses
    (``example`` is ``None``: a conversation with earlier turns…), the row's
    :data:`ROW_COLUMNS`, so that a reader of the items refuses it with the same message.

    Example:
        >>> example_fields({"text": "a", "input_ids": [1]}, Example("a"))
        {'prompt': 'a'}
    """
    if example is None:
        return {c: row[c] for c in ROW_COLUMNS if c in row}
    return {"prompt": example.prompt} | (
        {} if example.answer is None else {"answer": example.answer}
    )


def _clip(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _value(row: Mapping[str, Any], column: str, where: str, arg: str) -> Any:
    """``row[column]`` when it is a text or a message list (numbers become their decimal text)."""
    value = row[column]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if value is None or isinstance(value, (str, list)):
        return value
    raise ValueError(
        f"{where}: column {column!r} (`{arg}`) must be a string or a list of "
        f"{{'role', 'content'}} messages, got {type(value).__name__} {_clip(value)}"
    )


def example_from_columns(
    row: Mapping[str, Any],
    where: str,
    prompt_column: str,
    answer_column: str | None,
    *,
    answer_required: bool = True,
) -> Example:
    """The :class:`Example` of one row: its named columns, else TRL's ``messages`` / ``text``.

    ``answer_column="answer"`` falls back to TRL's ``completion``; ``answer_required=False``:
    a row without ``answer_column`` is a prompt without answer.

    Raises:
        ValueError: ``prompt_column`` (or a required ``answer_column``) is not a column of the
            row, or a value of the wrong shape (row and column named).
    """
    if prompt_column in row:
        answer = None
        if answer_column is not None:
            column = answer_column
            if column not in row and column == "answer" and "completion" in row:
                column = "completion"  # TRL's prompt/completion format
            if column not in row and answer_required:
                raise ValueError(
                    f"`answer_column`={answer_column!r} is not a column of {where} (it has "
                    f"the columns {sorted(row)}); set `answer_column` to one of them"
                )
            answer = _value(row, column, where, "answer_column") if column in row else None
        prompt = _value(row, prompt_column, where, "prompt_column")
        return example_from_row({"prompt": prompt, "completion": answer}, where=where)
    if "messages" in row or "text" in row:
        return example_from_row(row, where=where)
    raise ValueError(
        f"`prompt_column`={prompt_column!r} is not a column of {where}: expected a JSON object "
        f"with a {prompt_column!r} (plain or conversational), 'messages' or 'text', got the "
        f"columns {sorted(row)}; set `prompt_column` to one of them"
    )


def conversational_prompt(row: Mapping[str, Any], column: str, where: str) -> list[dict] | None:
    """A conversational ``row[column]`` as its checked messages; ``None`` for anything else."""
    prompt = row.get(column)
    if not (isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping)):
        return None
    for i, m in enumerate(prompt):
        if not (isinstance(m, Mapping) and isinstance(m.get("content"), str) and "role" in m):
            raise ValueError(
                f"{where}: column {column!r} (`prompt_column`) message {i} must be a "
                f"{{'role', 'content'}} dict with text content, got {_clip(m)}"
            )
    if not any(m["role"] == "user" for m in prompt):
        raise ValueError(f"{where}: column {column!r} (`prompt_column`) has no user turn")
    return [dict(m) for m in prompt]

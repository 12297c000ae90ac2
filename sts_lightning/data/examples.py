"""What a user may pass as examples or domains, turned into :class:`Example` lists.

Both STS callbacks (Lightning and HF/TRL) accept the same loose inputs: ``Example`` objects,
plain texts, or ``{"prompt", "answer"?}`` dicts (the JSON form HF checkpoints store), and
domains as built-in names or ``{name: items}``. The rules live here, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sts_lightning.data.prompts import Example

__all__ = [
    "DomainSpec",
    "as_examples",
    "example_from_row",
    "examples_from_rows",
    "examples_to_json",
    "resolve_domains",
]

DomainSpec = Sequence[str] | Mapping[str, Sequence[Example | str | Mapping]]
"""Built-in domain names, or ``{name: examples, texts or dicts}``."""


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


def examples_to_json(value: Any) -> Any:
    """``value`` with every ``Example`` (nested in dicts, lists, tuples) as a plain dict.

    The inverse of :func:`as_examples`, for JSON files (an HF ``trainer_state.json``); tuples
    become lists, anything else is left as is.

    Example:
        >>> examples_to_json({"law": [Example("Void?", "Yes."), "a text"]})
        {'law': [{'prompt': 'Void?', 'answer': 'Yes.'}, 'a text']}
    """
    if isinstance(value, Example):
        return {"prompt": value.prompt, "answer": value.answer}
    if isinstance(value, dict):
        return {k: examples_to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [examples_to_json(v) for v in value]
    return value


def resolve_domains(
    domains: DomainSpec, heldout_items: int
) -> tuple[dict[str, list[Example]], dict[str, list[Example]]]:
    """``(scored, heldout)`` examples per domain, from built-in names or ``{name: items}``.

    Args:
        domains: Built-in names (scored on their "score" half; ``heldout_items`` items of their
            "heldout" half are held out), or ``{name: items}`` (see :func:`as_examples`): the
            first half (at least one item) is scored and the later half held out.
        heldout_items: Held-out items per built-in domain.

    Returns:
        ``({name: scored}, {name: heldout})``; a user domain with fewer than 2 items has no
        held-out entry.

    Example:
        >>> scored, heldout = resolve_domains({"a": ["x", "y", "z"], "b": ["w"]}, 32)
        >>> [e.prompt for e in scored["a"]], [e.prompt for e in heldout["a"]], list(heldout)
        (['x'], ['y', 'z'], ['a'])
    """
    if isinstance(domains, Mapping):
        scored = {n: as_examples(v) for n, v in domains.items()}
        # User-given items: the later half is held out for the realised loss delta.
        return (
            {n: v[: max(1, len(v) // 2)] for n, v in scored.items()},
            {n: v[len(v) // 2 :] for n, v in scored.items() if len(v) >= 2},
        )
    from sts_lightning.data.domains import load_domain

    names = list(domains)
    return (
        {n: load_domain(n, split="score") for n in names},
        {n: load_domain(n, split="heldout", n=heldout_items) for n in names},
    )


_ROW_FORMATS = (
    '{"text"}, {"messages"}, {"prompt", "completion"?} (plain or conversational) or '
    '{"prompt", "answer"?}'
)


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
    conversational message lists, and ``{"prompt", "answer"?}``. A conversational prompt is
    never stringified: its single user turn's content is the prompt. An ``Example`` has no
    place for earlier turns (a system turn, a previous exchange), so a row with them raises.

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
    rows: Iterable[Mapping[str, Any]],
    *,
    argument: str = "train_dataset",
    eos_token: str | None = None,
    limit: int | None = None,
) -> list[Example]:
    """The examples of rows in any TRL dataset format (see :func:`example_from_row`).

    Args:
        rows: Dataset rows (a ``datasets.Dataset``, a list of dicts…).
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
        if not isinstance(row, Mapping):
            raise ValueError(f"`{argument}` row {i}: expected a dict, got {type(row).__name__}")
        out.append(example_from_row(row, where=f"`{argument}` row {i}", eos_token=eos_token))
    if not out:
        raise ValueError(f"`{argument}` has no rows")
    return out

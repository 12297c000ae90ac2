"""What a user may pass as domains, and examples as JSON.

Both STS callbacks (Lightning and HF/TRL) accept the same loose inputs: domains as built-in
names or ``{name: items}`` (each item read by
:func:`~sts_lightning.data.row_reader.as_examples`), and store examples in JSON as
``{"prompt", "answer"?}`` dicts. The rules live here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sts_lightning.data.prompts import Example
from sts_lightning.data.row_reader import as_examples

__all__ = ["DomainSpec", "examples_to_json", "resolve_domains"]

DomainSpec = Sequence[str] | Mapping[str, Sequence[Example | str | Mapping]]
"""Built-in domain names, or ``{name: examples, texts or dicts}``."""


def examples_to_json(value: Any) -> Any:
    """``value`` with every ``Example`` (nested in dicts, lists, tuples) as a plain dict.

    The inverse of :func:`~sts_lightning.data.row_reader.as_examples`, for JSON files (an HF
    ``trainer_state.json``); tuples become lists, anything else is left as is.

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
            "heldout" half are held out), or ``{name: items}`` (see
            :func:`~sts_lightning.data.row_reader.as_examples`): the first half (at least one
            item) is scored and the later half held out.
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

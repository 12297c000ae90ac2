"""Checks shared by every settings dataclass: one line per field in ``__post_init__``.

Each check raises a ``ValueError`` that names the field and says what was expected, so a bad
recipe value fails before any model is loaded.

Example:
    >>> positive_int("k", 100)
    >>> positive_int("k", 0)
    Traceback (most recent call last):
    ...
    ValueError: `k` must be a positive int, got 0
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["at_least", "check_fields", "non_negative_int", "one_of", "positive", "positive_int"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: object) -> None:
    """``value`` is an int ≥ 1 (bools are not ints here)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")


def non_negative_int(name: str, value: object) -> None:
    """``value`` is an int ≥ 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {value!r}")


def positive(name: str, value: object, *, optional: bool = False) -> None:
    """``value`` is a number > 0 (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if not ok:
        extra = " or None" if optional else ""
        raise ValueError(f"`{name}` must be a positive number{extra}, got {value!r}")


def at_least(name: str, value: object, low: float, *, strict: bool = False) -> None:
    """``value`` is a number ≥ ``low`` (> ``low`` when ``strict``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"`{name}` must be {'>' if strict else '>='} {low}, got {value!r}")


def one_of(name: str, value: object, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")


def check_fields(obj: object, check, *names: str, **kwargs: Any) -> None:
    """Apply ``check(name, getattr(obj, name), **kwargs)`` to each field name."""
    for name in names:
        check(name, getattr(obj, name), **kwargs)

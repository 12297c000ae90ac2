"""The one failure policy of both STS callbacks (Lightning and HF/TRL).

- A **misconfiguration found before step 1** (a ``ValueError`` or ``TypeError`` while the
  callback starts: a bad SAE id, an unknown domain, a tokenizer missing) raises: nothing is lost
  yet, and a run that silently monitors nothing would be worse.
- **Any later failure** (or any other failure at start: a full disk, an SAE on a dead GPU, NaN
  weights, an evaluator whose server is down) is reported once, as a warning that says what
  failed, and **monitoring stops for the rest of the run**: no further measurement, no report.
  Training goes on; monitoring never ends a run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["MonitorGuard"]

T = TypeVar("T")


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


class MonitorGuard:
    """Runs a callback's monitoring work under the policy of this module.

    Args:
        name: The callback's name, which starts every report (``"STSCallback"``).
        warn: How a report is issued (``rank_zero_warn`` in Lightning); a ``UserWarning`` by
            default.

    Example:
        >>> guard = MonitorGuard("Demo", warn=print)
        >>> guard.run("measure", lambda: 1 / 0)
        Demo: measure failed: ZeroDivisionError('division by zero'). STS monitoring is off for the rest of this run; training continues.
        >>> guard.stopped, guard.run("measure", lambda: 1)
        (True, None)
    """  # noqa: E501

    def __init__(self, name: str, warn: Callable[[str], Any] | None = None) -> None:
        self.name = name
        self.warn = warn or _warn
        self.stopped = False
        """Whether monitoring is off for the rest of the run (after a reported failure)."""
        self.error: BaseException | None = None
        """The failure that stopped monitoring."""

    def run(self, what: str, fn: Callable[..., T], *args: Any, starting: bool = False) -> T | None:
        """``fn(*args)``, or ``None`` once monitoring has stopped or when ``fn`` fails.

        Args:
            what: What ``fn`` does, for the report (``"forecast"``, ``"measure"``, ``"report"``).
            fn: The work.
            *args: Its arguments.
            starting: The callback is starting (before step 1): a ``ValueError`` or
                ``TypeError`` is a misconfiguration and is raised, not reported.

        Raises:
            ValueError, TypeError: Only with ``starting=True``.
        """
        if self.stopped:
            return None
        try:
            return fn(*args)
        except Exception as err:  # monitoring must never end a training run...
            if starting and isinstance(err, (ValueError, TypeError)):
                raise  # ...but a misconfiguration found before step 1 loses nothing: say so now
            self.stop(f"{what} failed: {err!r}", err)
            return None

    def stop(self, reason: str, error: BaseException | None = None) -> None:
        """Report ``reason`` once and stop monitoring for the rest of the run."""
        if not self.stopped:
            self.warn(
                f"{self.name}: {reason}. STS monitoring is off for the rest of this run; "
                "training continues."
            )
        self.stopped, self.error = True, error

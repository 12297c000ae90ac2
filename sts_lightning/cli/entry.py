"""The ``sts-lightning`` command line: ``predict`` (forecast before training), ``experiment``
(forecast → fine-tune → realised deltas → report), ``fit``/``validate``, ``recipes`` (list the
shipped recipes, copy one out), ``shipped-sae`` (regenerate the SAE shipped with the package and
compare) and ``demo``."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

from sts_lightning.cli.parser import command_parser

__all__ = ["main"]

log = logging.getLogger("sts_lightning")


# What a user can get wrong at the command line: a bad value, a missing or broken file, an
# unknown name, a model that cannot be found. Anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, KeyError, OSError)


# Each subcommand's module, imported when it runs: `--version` and `--help` stay fast, and
# Lightning's CLI imports (seconds) are paid by `fit` / `validate` only.
_SUBCOMMANDS = {
    "predict": "sts_lightning.cli.predict",
    "experiment": "sts_lightning.cli.experiment",
    "recipes": "sts_lightning.cli.recipes",
    "shipped-sae": "sts_lightning.cli.shipped_sae",
    "fit": "sts_lightning.cli.fit",
    "validate": "sts_lightning.cli.fit",
}


def _dispatch(argv: list[str]) -> int:
    if argv[:1] and argv[0] in _SUBCOMMANDS:
        module = importlib.import_module(_SUBCOMMANDS[argv[0]])
        # Lightning's CLI reads the subcommand itself; the others get their own arguments.
        return module.run(argv if argv[0] in ("fit", "validate") else argv[1:])
    parser = command_parser(None, __doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("predict", help="forecast before training (see `predict --help`)")
    sub.add_parser("experiment", help="forecast, fine-tune, measure, report (see --help)")
    sub.add_parser("fit", help="train from a recipe (see `fit --help`)")
    sub.add_parser("validate", help="validate from a recipe (see `validate --help`)")
    sub.add_parser("recipes", help="list the shipped recipes or copy one out (see --help)")
    sub.add_parser("shipped-sae", help="regenerate the shipped SAE and compare (see --help)")
    demo = sub.add_parser("demo", help="run the STS core on synthetic latents")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from sts_lightning.cli.demo import demo_report

        sys.stdout.write(demo_report(seed=args.seed) + "\n")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sts-lightning")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _message(err: BaseException) -> str:
    # KeyError's str() is the repr of its argument; the others read as written.
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sts-lightning``; returns the exit status.

    A user error (a bad value, a missing or broken file, an unknown name or model) is one
    ``error:`` line on stderr and exit status 2; ``--debug`` (anywhere) shows its traceback.

    Raises:
        SystemExit: Usage errors and ``--help`` / ``--version``, as argparse does (status 2 / 0).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    # One handler, on the package logger only: a root handler would print every line that
    # Lightning's own `lightning` handler prints a second time.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _dispatch(argv)
    except _USER_ERRORS as err:
        if debug:
            raise
        sys.stderr.write(f"error: {_message(err)} (--debug shows the traceback)\n")
        raise SystemExit(2) from None
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate

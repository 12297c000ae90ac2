"""``sts-lightning shipped-sae``: regenerate the SAE shipped with the package, compare, replace."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from sts_lightning.cli.parser import command_parser

__all__ = ["run"]


def run(argv: list[str]) -> int:
    """Run ``sts-lightning shipped-sae [--check | --write] [--out DIR]``.

    Returns 0, or 1 when ``--check`` finds a file that differs from the shipped one.
    """
    from importlib.resources import files

    from sts_lightning.cli.experiment import load_experiment
    from sts_lightning.model import shipped_sae

    parser = command_parser(
        "shipped-sae",
        "Train the embedded default's SAE from scratch (about 7 min on 2 CPU cores; the model "
        f"and settings of recipes/{shipped_sae.RECIPE}) and compare it with the copy shipped in "
        "the package, file by file.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 unless every file is equal")
    mode.add_argument("--write", action="store_true", help="replace the shipped copy with it")
    parser.add_argument("--out", help="an empty cache root to keep it in (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        job = load_experiment(Path(str(files("sts_lightning.recipes") / shipped_sae.RECIPE)))
        entry = shipped_sae.regenerate(job, Path(args.out or tmp))
        same = shipped_sae.compare(entry)
        for name, equal in same.items():
            sys.stdout.write(f"{name:28s} {'identical' if equal else 'DIFFERS'}\n")
        if args.write:
            sys.stdout.write(f"wrote {shipped_sae.write(entry)}\n")
    return 1 if args.check and not all(same.values()) else 0

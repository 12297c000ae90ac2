"""``sts-lightning recipes``: list the recipes shipped with the package, or copy one out."""

from __future__ import annotations

import sys

from sts_lightning.cli.parser import command_parser

__all__ = ["run"]


def run(argv: list[str]) -> int:
    """Run ``sts-lightning recipes list|copy NAME [DEST]``."""
    from sts_lightning.forecast.recipe import copy_recipe, list_recipes

    parser = command_parser(
        "recipes", "List the recipes shipped with the package, or copy one out to edit it."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="name and summary of every shipped recipe")
    copy = sub.add_parser("copy", help="copy a shipped recipe out to edit it")
    copy.add_argument("name", help="a name from `sts-lightning recipes list`")
    copy.add_argument("dest", nargs="?", default=".", help="directory or file (default: .)")
    args = parser.parse_args(argv)
    if args.action == "list":
        for name, summary in list_recipes().items():
            sys.stdout.write(f"{name:32s} {summary}\n")
    else:
        sys.stdout.write(f"wrote {copy_recipe(args.name, args.dest)}\n")
    return 0

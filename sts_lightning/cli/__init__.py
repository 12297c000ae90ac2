"""Stage 8, the ``sts-lightning`` command: one module per subcommand (``predict``,
``experiment``, ``fit``/``validate``, ``recipes``, ``demo``), the entry point that dispatches to
them (:mod:`~sts_lightning.cli.entry`) and the parser helper they share
(:mod:`~sts_lightning.cli.parser`)."""

from sts_lightning.cli.entry import main

__all__ = ["main"]

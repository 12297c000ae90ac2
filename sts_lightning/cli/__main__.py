"""``python -m sts_lightning.cli``: the ``sts-lightning`` command."""

from sts_lightning.cli.entry import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

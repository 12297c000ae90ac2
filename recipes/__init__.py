"""The shipped recipes (``*.yaml``), installed as ``sts_lightning.recipes``.

List them with ``sts-lightning recipes list`` and copy one out with
``sts-lightning recipes copy NAME [DEST]``.
"""

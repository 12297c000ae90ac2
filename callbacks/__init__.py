"""Lightning callbacks of sts_lightning, shipped as ``sts_lightning.callbacks``.

This folder sits at the top of the repository but is installed under the ``sts_lightning``
package (see ``[tool.setuptools] package-dir`` in ``pyproject.toml``); import it as
``from sts_lightning.callbacks import STSCallback``.
"""

from sts_lightning.callbacks.sts import STSCallback

__all__ = ["STSCallback"]

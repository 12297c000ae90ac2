"""The SAE of a predict recipe, nameable in a training recipe's YAML and resolved on first use.

A Lightning recipe enables the STS callback in ``trainer.callbacks``; its ``sae`` is usually a
sae-lens id or directory. On the embedded default there is no such id: the SAE is trained on the
model's residual stream on first use and cached, as ``sts-lightning predict`` does. This object
stands for that SAE (same recipe, same cache), so the recipe can say::

    sae:
      class_path: sts_lightning.forecast.recipe_sae.RecipeSAE
      init_args: {recipe: predict_arithmetic_smollm2}

Nothing is loaded when the recipe is parsed: the base model is loaded and the SAE read from the
cache (or trained) the first time the callback uses it, at train start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sts_lightning.forecast.recipe import recipes_dir

__all__ = ["RecipeSAE"]


class RecipeSAE:
    """The SAE a ``sts-lightning predict`` recipe resolves, on the device its ``device`` names.

    Attribute access (``encode``, ``decode``, ``cfg`` …) resolves the SAE once, then forwards.

    Args:
        recipe: A shipped recipe name (``sts-lightning recipes list``) or a predict recipe file.
        overrides: ``--key value`` overrides of the recipe (e.g. ``["--cache_dir", "/data"]``).
    """

    def __init__(
        self, recipe: str = "predict_arithmetic_smollm2", overrides: list[str] | None = None
    ) -> None:
        path = Path(recipe).expanduser()
        if not path.suffix:
            path = recipes_dir() / f"{recipe}.yaml"
        if not path.is_file():
            raise ValueError(
                f"`recipe`={recipe!r} is neither a shipped recipe nor a file "
                "(see `sts-lightning recipes list`)"
            )
        self.recipe, self.path, self.overrides = recipe, path, list(overrides or [])
        self._sae: Any = None

    def resolve(self) -> Any:
        """The SAE: loaded, or trained with the recipe's settings and cached (first call only)."""
        if self._sae is None:
            from sts_lightning.forecast.job import load_inputs, load_job

            # The predict job's own loading: its model, device and SAE cache, one rule.
            self._sae = load_inputs(load_job(self.path, *self.overrides))[2]
        return self._sae

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never resolve for pickling / copy probes
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __repr__(self) -> str:
        # Stable across runs: the callback's checkpoint state key is built from it.
        return f"RecipeSAE({self.recipe!r})"

"""The result of :func:`~sts_lightning.forecast.compare.predict_many`, saved and loaded.

Saved as a directory: ``comparison.json`` (set and domain names, threshold, timings) and
``comparison.safetensors`` (every set's per-item sums, the shared domain vectors), plus one
:class:`~sts_lightning.forecast.prediction.Prediction` directory per set under ``sets/<i>/``.
The comparison files are written last, each atomically: a directory holding them is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from sts_lightning.forecast.prediction import Prediction

__all__ = ["Comparison", "ItemSums"]

_ITEM_FIELDS = ("candidates", "sum_sq", "sum", "n_rows")


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass
class ItemSums:
    """Per training item (query) sums over its kept rows, for ``C`` candidate latents."""

    candidates: Tensor
    """``(C,)`` latent ids: the ``C`` largest Δ of the set, descending."""
    sum_sq: Tensor
    """``(n_items, C)`` float64: Σ_rows (icl − base)² per latent."""
    sum: Tensor
    """``(n_items, C)`` float64: Σ_rows (icl − base) per latent."""
    n_rows: Tensor
    """``(n_items,)`` float64: kept rows of each item (items with none are dropped)."""


@dataclass
class Comparison:
    """What :func:`predict_many` computed: a :class:`Prediction` per set and the bootstrap parts."""

    predictions: dict[str, Prediction]
    """``{set name: Prediction}``, in the order given."""
    items: dict[str, ItemSums]
    """``{set name: ItemSums}``: per-item sums for the bootstrap."""
    domain_vectors: dict[str, dict[str, Tensor]]
    """``{domain: {"act": mean h, "notebook": mean h², "icl": in-domain Δ}}``, each ``(d_sae,)``
    float64 (``icl`` absent without in-domain demonstrations); shared by every set."""
    max_norm: float
    """The one massive-activation threshold of every pass."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: ``domains`` (once), ``set/<name>`` (task pass per set), ``total``."""

    @property
    def names(self) -> list[str]:
        """The set names, in order."""
        return list(self.predictions)

    @property
    def domains(self) -> list[str]:
        """The domain names, in order."""
        return list(self.domain_vectors)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the predictions, ``comparison.json`` and ``.safetensors`` into ``directory``."""
        directory = Path(directory)
        for i, pred in enumerate(self.predictions.values()):
            pred.save(directory / "sets" / str(i))
        tensors = {
            f"items/{i}/{f}": getattr(self.items[name], f).detach().cpu().contiguous()
            for i, name in enumerate(self.names)
            for f in _ITEM_FIELDS
        }
        for j, vectors in enumerate(self.domain_vectors.values()):
            tensors |= {f"domain/{j}/{m}": v.detach().cpu() for m, v in vectors.items()}
        data = {
            "sets": self.names,
            "domains": self.domains,
            "max_norm": self.max_norm,
            "timings": self.timings,
        }
        # The predictions first, the comparison files last: their presence marks a complete save.
        _atomic(directory / "comparison.safetensors", lambda p: save_file(tensors, p))
        _atomic(directory / "comparison.json", lambda p: p.write_text(json.dumps(data) + "\n"))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Comparison:
        """Read a comparison written by :meth:`save`."""
        from safetensors import SafetensorError

        directory = Path(directory)
        bad = f"`directory` {directory} does not hold a readable comparison (comparison.json + "
        try:
            data = json.loads((directory / "comparison.json").read_text())
            tensors = load_file(str(directory / "comparison.safetensors"))
            names, domains = data["sets"], data["domains"]
            items = {
                name: ItemSums(**{f: tensors[f"items/{i}/{f}"] for f in _ITEM_FIELDS})
                for i, name in enumerate(names)
            }
        except (OSError, KeyError, TypeError, ValueError, SafetensorError) as err:
            raise ValueError(f"{bad}comparison.safetensors): {err}") from err
        vectors = {d: {} for d in domains}
        for key, value in tensors.items():
            if key.startswith("domain/"):
                _, j, mode = key.split("/")
                vectors[domains[int(j)]][mode] = value
        preds = {name: Prediction.load(directory / "sets" / str(i)) for i, name in enumerate(names)}
        return cls(preds, items, vectors, data["max_norm"], data.get("timings", {}))

"""The forecast as an object: per-domain scores, the shift vector, and how they were obtained.

Saved as a directory: ``prediction.json`` (scores, counts, config, timings: human-readable) and
``prediction.safetensors`` (Δ, δ, D and each domain's mean latent vector), so a forecast made
before training can be reloaded and compared with what training did.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from sts_lightning.forecast.modes import MODES, PRIMARY, check_mode

__all__ = ["DomainScore", "Prediction"]


@dataclass
class DomainScore:
    """STS of one domain in every mode (a field per :data:`~.modes.MODES` entry), and the
    tokens behind it."""

    act: float
    """Paper STS_act: mean over tokens of Σ_{j∈D} h_j."""
    notebook: float
    """Released-notebook parity: mean over D of the mean over tokens of h_j²."""
    signed: float
    """Mean over tokens of Σ_{j∈D} δ_j h_j: > 0 strengthens the domain's latents, < 0 suppresses."""
    icl: float | None
    """Paper STS_ICL with in-domain demonstrations; ``None`` when ``domain_demos`` is 0."""
    n_tokens: int
    """Token rows scored (after masks and outlier removal)."""
    n_dropped: int
    """Rows dropped as massive activations."""
    budget: int
    """The token budget asked for."""
    n_examples: int
    """Domain examples used."""


@dataclass
class Prediction:
    """Everything :func:`~sts_lightning.forecast.predict.predict` computed."""

    domains: dict[str, DomainScore]
    """Per-domain scores, in the order given."""
    shift: Tensor
    """Δ ``(d_sae,)``: mean squared ICL shift of each latent on the training queries."""
    signed_shift: Tensor
    """δ ``(d_sae,)``: mean signed ICL shift."""
    top_latents: Tensor
    """D ``(k,)``: indices of the k largest Δ, descending."""
    layer: int
    """Decoder layer read."""
    train: dict[str, int]
    """Training-side counts: ``n_tokens``, ``n_dropped``, ``n_examples``, ``budget``."""
    quality: dict[str, float]
    """SAE reconstruction on the training base rows: ``fvu``, ``l0``, ``dead_fraction``."""
    max_norm: float
    """Residual-norm threshold used to drop massive activations."""
    config: dict[str, Any]
    """The :class:`~sts_lightning.forecast.config.PredictConfig` used, as a dict."""
    domain_means: dict[str, Tensor] = field(default_factory=dict)
    """Each domain's mean latent vector ``(d_sae,)`` (for similarity controls)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (model, SAE, training set)."""

    def scores(self, mode: str = "act") -> dict[str, float]:
        """``{domain: score}`` in one of :data:`~.modes.MODES`."""
        check_mode("mode", mode)
        return {name: getattr(s, mode) for name, s in self.domains.items()}

    def table(self) -> str:
        """A fixed-width per-domain table with the training summary underneath."""
        head = f"{'domain':<18}" + "".join(f"{m.label:>10}" for m in MODES.values())
        lines = [head + f"{'tokens':>8}{'dropped':>8}", "-" * (len(head) + 16)]
        for name, s in self.domains.items():
            values = (getattr(s, mode) for mode in MODES)
            cells = "".join("{:>10}".format("n/a" if v is None else f"{v:.4g}") for v in values)
            lines.append(f"{name:<18}{cells}{s.n_tokens:>8}{s.n_dropped:>8}")
        q = self.quality
        lines.append(
            f"layer {self.layer}, k = {len(self.top_latents)}, "
            f"train tokens {self.train['n_tokens']} ({self.train['n_examples']} examples), "
            f"SAE FVU {q['fvu']:.3f}, L0 {q['l0']:.1f}, "
            f"dead {q['dead_fraction']:.1%}, max_norm {self.max_norm:.0f}"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The JSON part (tensors summarised by their top latents)."""
        return {
            "domains": {k: asdict(v) for k, v in self.domains.items()},
            "top_latents": self.top_latents.tolist(),
            "top_shift": self.shift[self.top_latents].tolist(),
            "layer": self.layer,
            "d_sae": int(self.shift.numel()),
            "train": self.train,
            "quality": self.quality,
            "max_norm": self.max_norm,
            "config": self.config,
            "timings": self.timings,
            "meta": self.meta,
        }

    def tensors(self) -> dict[str, Tensor]:
        """The tensor part, flat: Δ, δ, D and ``domain_mean/<name>``."""
        tensors = {
            "shift": self.shift,
            "signed_shift": self.signed_shift,
            "top_latents": self.top_latents,
        }
        return tensors | {f"domain_mean/{k}": v for k, v in self.domain_means.items()}

    @classmethod
    def from_parts(cls, data: dict[str, Any], tensors: dict[str, Tensor]) -> Prediction:
        """Inverse of (:meth:`to_dict`, :meth:`tensors`)."""
        return cls(
            domains={k: DomainScore(**v) for k, v in data["domains"].items()},
            shift=tensors["shift"],
            signed_shift=tensors["signed_shift"],
            top_latents=tensors["top_latents"],
            layer=data["layer"],
            train=data["train"],
            quality=data["quality"],
            max_norm=data["max_norm"],
            config=data["config"],
            domain_means={
                k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("domain_mean/")
            },
            timings=data.get("timings", {}),
            meta=data.get("meta", {}),
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``prediction.json`` and ``.safetensors`` into ``directory``, atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".prediction-"))
        try:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()},
                tmp / "prediction.safetensors",
            )
            text = json.dumps(self.to_dict(), indent=2, default=_json_default, allow_nan=True)
            (tmp / "prediction.json").write_text(text + "\n")
            for name in ("prediction.safetensors", "prediction.json"):
                os.replace(tmp / name, directory / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Prediction:
        """Read a prediction written by :meth:`save`."""
        from safetensors import SafetensorError

        directory = Path(directory)
        try:
            data = json.loads((directory / "prediction.json").read_text())
            tensors = load_file(str(directory / "prediction.safetensors"))
            return cls.from_parts(data, tensors)
        except (OSError, KeyError, TypeError, ValueError, SafetensorError) as err:
            raise ValueError(
                f"`directory` {directory} does not hold a readable prediction "
                f"(prediction.json + prediction.safetensors): {err}"
            ) from err

    def save_chart(self, path: str | os.PathLike) -> Path:
        """A PNG bar chart of the per-domain scores in each primary mode (STS_act and, when
        present, STS_ICL)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.domains)
        scores = self.domains.values()
        modes = [m for m in PRIMARY if all(getattr(s, m) is not None for s in scores)]
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 0.4 * len(names) + 1.5))
        colors = ("tab:blue", "tab:orange")
        for ax, mode, color in zip(axes if len(modes) > 1 else [axes], modes, colors, strict=True):
            values = [getattr(self.domains[n], mode) for n in names]
            ax.barh(names, values, color=color)
            ax.invert_yaxis()
            ax.set_title(f"STS_{mode} (layer {self.layer}, k = {len(self.top_latents)})")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")

"""The STS modes, each defined once: its name, how it is computed, whether it needs ICL.

Every table, ranking, report and plot iterates over :data:`MODES` (in this order), so a mode
added here appears everywhere. A mode scores one domain from its statistics and the shifted
latent set D = top-k(Δ) of the training data:

- ``act`` (paper STS_act): Σ_{j∈D} of the domain's mean latent h_j;
- ``icl`` (paper STS_ICL): Σ_{j∈D} of the domain's own ICL shift Δ_j (needs the domain's
  in-domain-demonstration pass, ``domain_demos`` > 0);
- ``notebook`` (the released notebook): mean over D of the domain's mean h_j²;
- ``signed``: Σ_{j∈D} δ_j h_j with the training data's signed shift δ: > 0 strengthens the
  domain's latents, < 0 suppresses them.

The experiment also reports each ``contrast`` mode with D taken from the task-specific shift
Δ_task − Δ_unrelated (``<name>_contrast``), and compares every mode with the same pipeline on
raw residual neurons (:func:`raw_twin`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from torch import Tensor

__all__ = [
    "MODES",
    "PRIMARY",
    "RANK_MODES",
    "Mode",
    "check_mode",
    "contrast_modes",
    "raw_twin",
    "raw_twins",
]


@dataclass(frozen=True)
class Mode:
    """One STS mode."""

    name: str
    """Its key in scores, tables, metrics (``sts/pred/<name>/<domain>``) and settings."""
    label: str
    """Its column title in tables."""
    needs_icl: bool
    """Whether it needs the domains' in-domain-demonstration pass (``domain_demos`` > 0);
    without it the mode's score is ``None`` (NaN in the experiment)."""
    primary: bool
    """Whether it is a pre-registered primary predictor (the paper's two definitions)."""
    rankable: bool
    """Whether candidate training sets may be ranked on it (non-negative scores, so a scale
    relative to the mean over sets means something)."""
    contrast: bool
    """Whether the experiment reports it with D from the task-specific contrast shift."""
    vector: Literal["mean", "mean_sq", "shift"]
    """The per-latent domain vector it reads over D: mean h, mean h², or the domain's ICL Δ."""
    reduce: Literal["sum", "mean"]
    """How the vector's values over D combine into the score."""
    compute: Callable[[Any, Tensor, Tensor], Tensor | None]
    """``(statistics, top, signed) -> score``: from a domain's ``moments``
    (:class:`~sts_lightning.stats.LatentMoments`) and ``shift``
    (:class:`~sts_lightning.stats.PairedShift` or ``None``), D ``(k,)`` and δ ``(d_sae,)``."""

    def score(self, stats: Any, top: Tensor, signed: Tensor) -> float | None:
        """The mode's score of one domain; ``None`` when it needs ICL and the domain has none.

        Args:
            stats: The domain's statistics (``moments``, ``shift``).
            top: D ``(k,)``.
            signed: δ ``(d_sae,)``.
        """
        if self.needs_icl and stats.shift is None:
            return None
        return float(self.compute(stats, top, signed))

    def domain_vector(self, moments: Mapping[str, Tensor], shift: Tensor | None) -> Tensor | None:
        """The domain's ``(d_sae,)`` vector this mode reads (``None``: ICL mode without ICL).

        Args:
            moments: ``LatentMoments.compute()`` (``mean``, ``mean_sq``).
            shift: The domain's ICL Δ ``(d_sae,)``, or ``None``.
        """
        return shift if self.vector == "shift" else moments[self.vector]

    def combine(self, picked: Tensor) -> Tensor:
        """The score from the vector's values over D, D on the last dimension."""
        return picked.mean(-1) if self.reduce == "mean" else picked.sum(-1)


_ALL = (
    Mode(
        name="act", label="STS_act", needs_icl=False, primary=True, rankable=True,
        contrast=True, vector="mean", reduce="sum",
        compute=lambda d, top, signed: d.moments.sts_act(top),
    ),
    Mode(
        name="icl", label="STS_ICL", needs_icl=True, primary=True, rankable=True,
        contrast=True, vector="shift", reduce="sum",
        compute=lambda d, top, signed: d.shift.sts_icl(top),
    ),
    Mode(
        name="notebook", label="notebook", needs_icl=False, primary=False, rankable=True,
        contrast=False, vector="mean_sq", reduce="mean",
        compute=lambda d, top, signed: d.moments.sts_notebook(top),
    ),
    Mode(
        name="signed", label="signed", needs_icl=False, primary=False, rankable=False,
        contrast=False, vector="mean", reduce="sum",
        compute=lambda d, top, signed: d.moments.sts_signed(signed, top),
    ),
)  # fmt: skip

MODES: Mapping[str, Mode] = MappingProxyType({m.name: m for m in _ALL})
"""Every STS mode by name, in report order."""

PRIMARY: tuple[str, ...] = tuple(n for n, m in MODES.items() if m.primary)
"""The pre-registered primary predictors (the paper's STS_act and STS_ICL)."""

RANK_MODES: tuple[str, ...] = tuple(n for n, m in MODES.items() if m.rankable)
"""Modes candidate training sets can be ranked on."""


def check_mode(field: str, mode: str, allowed: tuple[str, ...] | None = None) -> Mode:
    """The :class:`Mode` named ``mode``; raises naming ``field`` when it is not allowed.

    Example:
        >>> check_mode("mode", "act").label
        'STS_act'
    """
    allowed = tuple(MODES) if allowed is None else allowed
    if mode not in allowed:
        raise ValueError(f"`{field}` must be one of {allowed}, got {mode!r}")
    return MODES[mode]


def contrast_modes() -> tuple[str, ...]:
    """``<name>_contrast`` of every mode the experiment reports with the contrast shift.

    Example:
        >>> contrast_modes()
        ('act_contrast', 'icl_contrast')
    """
    return tuple(f"{n}_contrast" for n, m in MODES.items() if m.contrast)


def raw_twin(name: str) -> str:
    """The raw-neuron predictor a mode (or its ``_contrast`` variant) is compared with.

    Example:
        >>> raw_twin("icl_contrast"), raw_twin("notebook")
        ('raw_icl', 'raw_act')
    """
    return "raw_icl" if MODES[name.removesuffix("_contrast")].needs_icl else "raw_act"


def raw_twins() -> dict[str, str]:
    """``{mode: raw twin}`` of every mode and contrast mode, grouped by twin (``raw_act``
    first), the paper's modes before the contrast ones."""
    names = [*MODES, *contrast_modes()]
    return {n: twin for twin in ("raw_act", "raw_icl") for n in names if raw_twin(n) == twin}

"""Which residual-stream rows every statistic keeps: the massive-activation rule, written once.

A few residual-stream tokens carry "massive activations": at layer 12 of SmolLM2-135M about
0.1 % of tokens (position 0 and a few others) have norms up to ~24,000 against a median of ~140,
and hold ~70 % of the variance. They wreck SAE training and dominate every per-latent statistic,
so SAE training, FVU, the forecast, the tracker and the experiment all drop them with the rule
below. Non-finite rows (NaN/inf) are dropped with them and counted, never averaged in.

The threshold is either given (``max_norm``) or fixed once, from the *finite* rows of the first
batch seen (``outlier_factor`` × their median norm), so that every statistic of a run compares
the same kind of rows.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from sts_lightning.config import at_least, positive

__all__ = ["RowFilter", "keep_rows", "massive_threshold", "row_norms"]

log = logging.getLogger(__name__)


def row_norms(x: Tensor) -> Tensor:
    """L2 norm of each row ``(...)`` of ``x`` ``(..., d_model)``, in float32 at least.

    Norms of ~24,000 overflow fp16 when squared, hence the promotion.
    """
    return torch.linalg.vector_norm(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


def keep_rows(x: Tensor, max_norm: float) -> Tensor:
    """Mask of token rows whose L2 norm is at most ``max_norm`` (and finite).

    Args:
        x: Activations ``(..., d_model)``.
        max_norm: Largest norm kept, ``> 0`` (``math.inf`` keeps every finite row).

    Returns:
        Bool mask ``(...)``: ``True`` = keep.

    Example:
        >>> keep_rows(torch.tensor([[3.0, 4.0], [300.0, 400.0], [float("nan"), 0.0]]), 100.0)
        tensor([ True, False, False])
        >>> keep_rows(torch.tensor([[3.0, 4.0], [float("inf"), 0.0]]), math.inf)
        tensor([ True, False])
    """
    positive("max_norm", max_norm)
    norms = row_norms(x)
    # NaN compares False; an inf row would pass `<= inf`, so finiteness is checked on its own.
    return (norms <= max_norm) & torch.isfinite(norms)


def massive_threshold(x: Tensor, factor: float) -> float | None:
    """``factor`` × the median norm of the *finite* rows of ``x``; ``None`` when none is finite.

    Example:
        >>> x = torch.tensor([[3.0, 4.0], [6.0, 8.0], [float("nan"), 0.0], [0.0, 5.0]])
        >>> massive_threshold(x, 10.0)  # median of 5, 10, 5 (the NaN row is left out)
        50.0
        >>> massive_threshold(torch.full((2, 2), float("nan")), 10.0) is None
        True
    """
    norms = row_norms(x).reshape(-1)
    norms = norms[torch.isfinite(norms)]
    return float(norms.median()) * factor if norms.numel() else None


class RowFilter:
    """The rule as a stateful mask: the threshold is fixed by the first batch with finite rows.

    Args:
        max_norm: Fixed threshold; ``None`` derives it from the first batch.
        outlier_factor: Multiple of the median norm used when ``max_norm`` is ``None``.

    Example:
        >>> keep = RowFilter(outlier_factor=10.0)
        >>> keep(torch.tensor([[3.0, 4.0], [300.0, 400.0], [float("nan"), 0.0]]))
        tensor([ True, False, False])
        >>> keep.max_norm
        50.0
    """

    def __init__(self, max_norm: float | None = None, outlier_factor: float = 10.0) -> None:
        positive("max_norm", max_norm, optional=True)
        at_least("outlier_factor", outlier_factor, 1, strict=True)
        self.max_norm, self.outlier_factor = max_norm, outlier_factor

    def __call__(self, x: Tensor) -> Tensor:
        """Bool mask ``(...)`` of the rows of ``x`` ``(..., d_model)`` to keep."""
        if self.max_norm is None:
            self.max_norm = massive_threshold(x, self.outlier_factor)
            if self.max_norm is not None:
                log.info("massive-activation threshold: residual norm > %.1f", self.max_norm)
        return keep_rows(x, self.max_norm if self.max_norm is not None else math.inf)

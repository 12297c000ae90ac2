"""Does the forecast agree with what fine-tuning did? A torchmetrics correlation metric."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from scipy import stats as sps
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from sts_lightning.config import positive_int

__all__ = ["TransferabilityCorrelation", "bootstrap_pearson_ci"]

_KEYS = (
    "pearson",
    "pearson_p",
    "spearman",
    "spearman_p",
    "kendall",
    "kendall_p",
    "pearson_ci_low",
    "pearson_ci_high",
)


def bootstrap_pearson_ci(
    x: np.ndarray, y: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Paired percentile-bootstrap confidence interval of Pearson's r.

    Resamples whose x or y is constant (r undefined) are dropped rather than counted.

    Args:
        x: Predicted scores ``(n,)``.
        y: Realised deltas ``(n,)``.
        n_resamples: Bootstrap resamples.
        confidence: Two-sided coverage, in (0, 1).
        seed: Seed of the resampling generator: the same seed gives the same interval.

    Returns:
        ``(low, high)``.

    Example:
        >>> x = np.arange(8.0); y = x + np.array([0.3, -0.2, 0.1, 0.0, -0.4, 0.2, 0.1, -0.1])
        >>> low, high = bootstrap_pearson_ci(x, y, seed=1)
        >>> bool(0.9 < low < high <= 1.0)
        True
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)))  # (B, n)
    xs, ys = x[idx], y[idx]
    xs = xs - xs.mean(axis=1, keepdims=True)
    ys = ys - ys.mean(axis=1, keepdims=True)
    denom = np.sqrt((xs**2).sum(axis=1) * (ys**2).sum(axis=1))
    valid = denom > 0
    r = (xs * ys).sum(axis=1)[valid] / denom[valid]
    if r.size == 0:  # every resample degenerate: no interval can be given
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(np.clip(r, -1.0, 1.0), [alpha, 1.0 - alpha])
    return float(low), float(high)


def _values(state: list[Tensor] | Tensor) -> np.ndarray:
    """A list state as float64 numpy: a list locally, one concatenated tensor after a DDP sync."""
    if isinstance(state, list) and not state:
        return np.empty(0)
    return dim_zero_cat(state).double().cpu().numpy()


class TransferabilityCorrelation(Metric):
    """Correlation between per-domain predicted scores and realised per-domain deltas.

    ``update(predicted, realised)`` takes one value per domain, in any batching; ``compute()``
    returns a dict of float64 scalars: ``pearson``, ``spearman``, ``kendall`` (tau-b), their
    two-sided p-values (``*_p``), a seeded bootstrap CI of Pearson (``pearson_ci_low``,
    ``pearson_ci_high``) and ``n``. Values come from :mod:`scipy.stats`.

    Args:
        absolute: Correlate with ``|realised|`` (the paper predicts the magnitude of change);
            ``False`` correlates with the signed deltas.
        n_bootstrap: Bootstrap resamples for the CI.
        confidence: Coverage of the CI, in (0, 1).
        seed: Bootstrap seed; the CI is reproducible for a given seed.

    Example:
        >>> metric = TransferabilityCorrelation()
        >>> metric.update(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([-1.0, 2.0, -3.0]))
        >>> metric.update(torch.tensor([0.4]), torch.tensor([4.5]))
        >>> out = metric.compute()
        >>> round(out["spearman"].item(), 6), int(out["n"])
        (1.0, 4)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        absolute: bool = True,
        n_bootstrap: int = 2000,
        confidence: float = 0.95,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        positive_int("n_bootstrap", n_bootstrap)
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"`confidence` must lie in (0, 1), got {confidence!r}")
        self.absolute = absolute
        self.n_bootstrap = n_bootstrap
        self.confidence = confidence
        self.seed = seed
        self.add_state("predicted", default=[], dist_reduce_fx="cat")
        self.add_state("realised", default=[], dist_reduce_fx="cat")

    def update(self, predicted: Tensor, realised: Tensor) -> None:
        """Add per-domain values: scalars or 1-D tensors of equal length."""
        predicted = self._as_vector("predicted", predicted)
        realised = self._as_vector("realised", realised)
        if predicted.shape != realised.shape:
            raise ValueError(
                "`predicted` and `realised` must hold one value per domain each, got "
                f"shapes {tuple(predicted.shape)} and {tuple(realised.shape)}"
            )
        self.predicted.append(predicted)
        self.realised.append(realised)

    @staticmethod
    def _as_vector(name: str, x: Tensor | float) -> Tensor:
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"`{name}` must be a real-valued tensor (n_domains,), got {type(x).__name__}"
            ) from err
        if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"`{name}` must be a real-valued tensor, got dtype {x.dtype}")
        if x.ndim > 1:
            raise ValueError(f"`{name}` must be a scalar or 1-D (n_domains,), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"`{name}` contains NaN or inf; expected finite per-domain values")
        return x.detach().reshape(-1).to(torch.float64)

    def compute(self) -> dict[str, Tensor]:
        """Correlations, p-values, bootstrap CI of Pearson and ``n``; see the class docstring."""
        x, y = _values(self.predicted), _values(self.realised)
        if self.absolute:
            y = np.abs(y)
        n = len(x)
        if n < 3:
            raise ValueError(
                f"TransferabilityCorrelation needs at least 3 domains to correlate, got n={n}"
            )
        out = dict.fromkeys(_KEYS, float("nan"))
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            which = "predicted" if np.ptp(x) == 0 else "realised"
            warnings.warn(
                f"TransferabilityCorrelation: `{which}` is constant over {n} domains; "
                "correlations are undefined and returned as NaN",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            out["pearson"], out["pearson_p"] = sps.pearsonr(x, y)
            out["spearman"], out["spearman_p"] = sps.spearmanr(x, y)
            out["kendall"], out["kendall_p"] = sps.kendalltau(x, y)
            out["pearson_ci_low"], out["pearson_ci_high"] = bootstrap_pearson_ci(
                x, y, self.n_bootstrap, self.confidence, self.seed
            )
        result = {k: torch.tensor(float(v), dtype=torch.float64) for k, v in out.items()}
        result["n"] = torch.tensor(n)
        return result

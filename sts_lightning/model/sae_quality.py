"""Is the SAE any good on our activations? FVU, mean L0 and the dead-latent fraction.

:class:`ReconstructionQuality` accumulates them in a stream (a ``torchmetrics.Metric``);
:func:`evaluate_sae` runs an SAE over activation rows into it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from sts_lightning.config import positive_int
from sts_lightning.model.sae_encode import encode, sae_d_in, sae_d_sae, sae_param

__all__ = ["ReconstructionQuality", "evaluate_sae"]


class ReconstructionQuality(Metric):
    """Streaming FVU, mean L0 and dead-latent fraction of an SAE over activation rows.

    FVU = Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖², with x̄ the mean over *all* rows seen, kept exact
    in a stream through Σ_t ‖x_t − x̄‖² = Σ_t ‖x_t‖² − ‖Σ_t x_t‖² / n (float64 sums). This is
    sae-lens' ``explained_variance`` = 1 − FVU. L0 is the mean number of nonzero latents per token;
    a latent is dead if it never fired on the rows seen (so it depends on how many were seen).

    Args:
        d_in: Activation width.
        d_sae: Number of latents.

    Example:
        >>> m = ReconstructionQuality(d_in=2, d_sae=3)
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
        >>> m.update(x, x_hat=torch.tensor([[2.0, 0.0], [2.0, 0.0]]), latents=torch.eye(2, 3))
        >>> {k: round(float(v), 3) for k, v in m.compute().items()}
        {'fvu': 1.0, 'l0': 1.0, 'dead_fraction': 0.333, 'n_tokens': 2.0}
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, d_in: int, d_sae: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        positive_int("d_in", d_in)
        positive_int("d_sae", d_sae)
        self.d_in, self.d_sae = d_in, d_sae
        f64 = torch.float64
        self.add_state("n_tokens", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_x", torch.zeros(d_in, dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_sq_norm", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_sq_err", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("sum_l0", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("fire_count", torch.zeros(d_sae, dtype=f64), dist_reduce_fx="sum")

    def update(self, x: Tensor, x_hat: Tensor, latents: Tensor) -> None:
        """Add rows.

        Args:
            x: Raw activations ``(n_tokens, d_in)``.
            x_hat: The SAE's reconstruction of ``x``, ``(n_tokens, d_in)``.
            latents: The SAE's latents of ``x``, ``(n_tokens, d_sae)``.
        """
        if x.ndim != 2 or x.shape[1] != self.d_in or x_hat.shape != x.shape:
            raise ValueError(
                f"`x` and `x_hat` must both have shape (n_tokens, d_in={self.d_in}), got "
                f"{tuple(x.shape)} and {tuple(x_hat.shape)}"
            )
        if latents.shape != (x.shape[0], self.d_sae):
            raise ValueError(
                f"`latents` must have shape (n_tokens={x.shape[0]}, d_sae={self.d_sae}), "
                f"got {tuple(latents.shape)}"
            )
        x, x_hat = x.double(), x_hat.to(x.device).double()
        fired = latents != 0  # (n, d_sae)
        # Reduce where the rows are (e.g. a GPU SAE), then move the small sums to the states.
        device = self.sum_x.device
        self.n_tokens += x.shape[0]
        self.sum_x += x.sum(dim=0).to(device)
        self.sum_sq_norm += x.square().sum().to(device)
        self.sum_sq_err += (x - x_hat).square().sum().to(device)
        self.sum_l0 += fired.sum().to(device)
        self.fire_count += fired.sum(dim=0).to(device)

    def compute(self) -> dict[str, Tensor]:
        """``fvu``, ``l0``, ``dead_fraction`` and ``n_tokens`` as float64 scalars."""
        n = self.n_tokens
        if n <= 0:
            raise ValueError("ReconstructionQuality has no tokens yet: call `update` first")
        total_var = self.sum_sq_norm - self.sum_x.square().sum() / n
        return {
            "fvu": self.sum_sq_err / total_var,
            "l0": self.sum_l0 / n,
            "dead_fraction": (self.fire_count == 0).double().mean(),
            "n_tokens": n.clone(),
        }


def evaluate_sae(sae: Any, x: Tensor, *, batch_size: int = 4096) -> dict[str, float]:
    """FVU, mean L0 and dead-latent fraction of ``sae`` on activation rows ``x`` ``(n, d_in)``.

    Rows are passed as they are: filter them with :func:`~sts_lightning.model.rows.keep_rows`
    first, as for training.
    """
    quality = ReconstructionQuality(sae_d_in(sae), sae_d_sae(sae))
    param = sae_param(sae)
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            rows = x[start : start + batch_size]
            latents = encode(sae, rows)
            if param is not None:
                latents = latents.to(param.dtype)
            x_hat = sae.decode(latents)
            quality.update(rows.to(x_hat.device), x_hat, latents)
    return {k: float(v) for k, v in quality.compute().items()}

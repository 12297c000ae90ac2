"""Reading latents off an SAE: its widths and :func:`encode`.

Works for a sae-lens SAE and for any object with ``encode`` (and ``W_enc`` or a ``cfg`` with
``d_in``/``d_sae``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["encode", "sae_d_in", "sae_d_sae", "sae_param"]


def sae_d_in(sae: Any) -> int:
    """Input width of the SAE (the model's ``d_model`` it expects)."""
    cfg = getattr(sae, "cfg", None)
    if getattr(cfg, "d_in", None) is not None:
        return int(cfg.d_in)
    return int(sae.W_enc.shape[0])


def sae_d_sae(sae: Any) -> int:
    """Number of SAE latents."""
    cfg = getattr(sae, "cfg", None)
    if getattr(cfg, "d_sae", None) is not None:
        return int(cfg.d_sae)
    return int(sae.W_enc.shape[1])


def sae_param(sae: Any) -> Tensor | None:
    """A parameter of the SAE (where it lives, in what dtype); ``None`` for a non-module."""
    return next(iter(sae.parameters()), None) if isinstance(sae, nn.Module) else None


def encode(sae: Any, x: Tensor) -> Tensor:
    """SAE latents of activation rows, in float32, without autograd.

    Args:
        sae: The SAE (see :func:`~sts_lightning.model.sae_load.load_sae`).
        x: Residual-stream rows ``(n_tokens, d_model)``; moved to the SAE's device and dtype.

    Returns:
        ``(n_tokens, d_sae)`` float32 on the SAE's device.
    """
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != sae_d_in(sae):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`x` must have shape (n_tokens, d_in={sae_d_in(sae)}), got {shape}")
    param = sae_param(sae)
    with torch.inference_mode():
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        latents = sae.encode(x)
        if latents.is_sparse:
            latents = latents.to_dense()
        return latents.float()

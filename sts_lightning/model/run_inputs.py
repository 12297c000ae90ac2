"""What a run decides before its first forward: device, dtype, layer, ``k`` and pad id.

One place for each of these decisions: ``sts-lightning predict`` (:mod:`sts_lightning.forecast.job`
and :func:`~sts_lightning.forecast.predict.predict`), the experiment, the STS tracker both
callbacks share and SAE-data collection all call the functions here, so that they cannot
disagree (e.g. on what pads a batch when the tokenizer has no pad token).

- :func:`resolve_device`: a ``device`` setting → a :class:`torch.device` this machine has
  (:mod:`~sts_lightning.model.device`);
- :func:`resolve_dtype`: a ``dtype`` setting → a :class:`torch.dtype`;
- :func:`resolve_layer`: the decoder layer to capture, given or read from the SAE;
- :func:`check_k`: ``k`` latents must fit in the SAE's ``d_sae``;
- :func:`resolve_sae_layer`: the layer, once the SAE is checked against the model;
- :func:`resolve_pad_id`: the pad token, else EOS.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from sts_lightning.model.device import resolve_device
from sts_lightning.model.sae import check_sae_fits, sae_d_sae, sae_layer

__all__ = [
    "DTYPES",
    "check_k",
    "resolve_device",
    "resolve_dtype",
    "resolve_layer",
    "resolve_pad_id",
    "resolve_sae_layer",
]

DTYPES: dict[str, str] = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
"""Every ``dtype`` setting name and the torch dtype it means."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """The torch dtype a ``dtype`` setting names (``"auto"`` and dtypes pass through).

    Raises:
        ValueError: Not a name in :data:`DTYPES`, ``"auto"`` or a ``torch.dtype``.

    Example:
        >>> resolve_dtype("bf16"), resolve_dtype("auto")
        (torch.bfloat16, 'auto')
    """
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise ValueError(
            f"`dtype` must be one of {sorted(DTYPES)}, 'auto' or a torch.dtype, got {dtype!r}"
        )
    return getattr(torch, DTYPES[dtype])


def resolve_layer(sae: Any, layer: int | None) -> int:
    """The decoder layer to capture: ``layer`` when given, else the one the SAE's hook names.

    Raises:
        ValueError: ``layer`` is ``None`` and the SAE's metadata names no hook layer.
    """
    if layer is not None:
        return layer
    found = sae_layer(sae)
    if found is None:
        raise ValueError("`layer` is None and the SAE's metadata names no hook layer: set it")
    return found


def check_k(k: int, sae: Any, field: str = "k") -> None:
    """Raise unless the SAE has at least ``k`` latents to choose the shifted set D from.

    Args:
        k: Size of D.
        sae: The SAE.
        field: The setting's name, for the error (``"config.k"``, ``"predict.k"``).
    """
    d_sae = sae_d_sae(sae)
    if k > d_sae:
        raise ValueError(f"`{field}`={k} exceeds the SAE's d_sae={d_sae}")


def resolve_sae_layer(model, sae: Any, layer: int | None, prefix: str) -> int:
    """The layer a forecast captures, once the SAE is checked against the model there.

    Args:
        model: The causal LM.
        sae: The SAE.
        layer: The layer setting; ``None`` reads it from the SAE's metadata.
        prefix: Where the settings live, for errors (``"config"``, ``"predict"``).

    Raises:
        ValueError: No layer given or recorded, or the SAE does not read this model's
            residual stream after that layer.
    """
    try:
        layer = resolve_layer(sae, layer)
    except ValueError as err:
        raise ValueError(
            f"`{prefix}.layer` is None and the SAE's metadata names no hook layer"
        ) from err
    check_sae_fits(sae, model, layer)
    return layer


def resolve_pad_id(tokenizer) -> int:
    """The id padding is filled with: the pad token, else the eos token (with a warning).

    Padding is masked out everywhere, so any valid id gives the same numbers.

    Raises:
        ValueError: The tokenizer has neither a pad nor an eos token.
    """
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("`tokenizer` has neither a pad nor an eos token: set tokenizer.pad_token")
    # Padding is masked out, so any valid id works; say so once rather than fail.
    warnings.warn("`tokenizer` has no pad token; padding with the eos token", stacklevel=3)
    return tokenizer.eos_token_id

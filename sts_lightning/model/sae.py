"""The sparse autoencoder STS reads its latents from: load, check, encode, judge.

Read top to bottom, in the order a run uses it (each step's module in brackets; every name is
importable from here):

1. :func:`load_sae` turns a sae-lens id ``"release/sae_id"``, a local sae-lens directory or an
   in-memory object with ``encode`` into a frozen SAE in eval mode
   (:mod:`~sts_lightning.model.sae_load`).
2. :func:`sae_layer`, :func:`sae_d_in`, :func:`sae_d_sae` and :func:`check_sae` make sure it reads
   the residual stream *after* decoder layer ``L`` of *this* model (the reference code encoded the
   MLP output by mistake). The layer checks live here; which layer a run captures is decided
   in :mod:`~sts_lightning.model.run_inputs`.
3. :func:`~sts_lightning.model.rows.keep_rows` drops the rare "massive activation" tokens
   before anything is encoded.
4. :func:`encode` gives float32 latents ``(n_tokens, d_sae)``
   (:mod:`~sts_lightning.model.sae_encode`).
5. :class:`ReconstructionQuality` / :func:`evaluate_sae` say whether the SAE is any good on our
   activations: fraction of variance unexplained (FVU), mean L0 and dead-latent fraction
   (:mod:`~sts_lightning.model.sae_quality`).

sae-lens is imported inside the functions that need it: ``import sae_lens`` costs 6-7 s. Training
lives in :mod:`sts_lightning.model.sae_training`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import nn

from sts_lightning.model.sae_encode import encode, sae_d_in, sae_d_sae
from sts_lightning.model.sae_load import load_sae
from sts_lightning.model.sae_quality import ReconstructionQuality, evaluate_sae

__all__ = [
    "ReconstructionQuality",
    "check_sae",
    "check_sae_fits",
    "encode",
    "evaluate_sae",
    "load_sae",
    "resid_post_hook",
    "sae_d_in",
    "sae_d_sae",
    "sae_layer",
]

logger = logging.getLogger(__name__)

_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(\w+)$")


def resid_post_hook(layer: int) -> str:
    """The sae-lens hook name of the residual stream after decoder layer ``layer``.

    Example:
        >>> resid_post_hook(12)
        'blocks.12.hook_resid_post'
    """
    return f"blocks.{layer}.hook_resid_post"


def _hook_name(sae: Any) -> str | None:
    cfg = getattr(sae, "cfg", None)
    metadata = getattr(cfg, "metadata", None)
    # sae-lens v6 keeps it in cfg.metadata (missing keys read as None); v5 on cfg itself.
    return getattr(metadata, "hook_name", None) or getattr(cfg, "hook_name", None)


def sae_layer(sae: Any) -> int | None:
    """The decoder layer ``L`` whose residual-stream output the SAE reads, from its hook name.

    ``blocks.L.hook_resid_post`` → ``L``. ``blocks.L.hook_resid_pre`` (the input of block ``L``)
    is the same tensor as the output of block ``L - 1`` → ``L - 1``, with a log line.

    Returns:
        ``L``, or ``None`` when the SAE records no hook name.

    Raises:
        ValueError: The hook is not on the residual stream between blocks (``hook_mlp_out``,
            ``hook_resid_mid``, ``blocks.0.hook_resid_pre`` = embeddings, ...): its latents would
            not describe the tensor STS captures.
    """
    hook = _hook_name(sae)
    if hook is None:
        return None
    match = _HOOK.match(hook)
    if match and match.group(2) == "resid_post":
        return int(match.group(1))
    if match and match.group(2) == "resid_pre" and int(match.group(1)) >= 1:
        layer = int(match.group(1)) - 1
        logger.info("SAE hook %s reads the residual stream after layer %d", hook, layer)
        return layer
    raise ValueError(
        f"`sae` was trained on hook {hook!r}, expected 'blocks.L.hook_resid_post': STS captures "
        "the residual stream after decoder layer L"
    )


def check_sae(sae: Any, *, d_model: int, n_layers: int, layer: int) -> None:
    """Raise unless ``sae`` can encode the residual stream after ``layer`` of this model.

    Args:
        sae: The SAE.
        d_model: The model's hidden size.
        n_layers: The model's number of decoder layers.
        layer: The layer ``L`` the caller will capture, in ``[0, n_layers)``.

    Raises:
        ValueError: ``layer`` is out of range, the SAE's input width is not ``d_model``, or its
            recorded hook is at another layer.
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"`layer` must be an int in [0, n_layers={n_layers}), got {layer!r}")
    d_in = sae_d_in(sae)
    if d_in != d_model:
        raise ValueError(
            f"`sae` expects inputs of width d_in={d_in} but the model has d_model={d_model}: "
            "it was trained on another model"
        )
    trained_layer = sae_layer(sae)
    if trained_layer is not None and trained_layer != layer:
        raise ValueError(
            f"`sae` was trained on the residual stream after layer {trained_layer} "
            f"({_hook_name(sae)!r}) but `layer`={layer} was requested"
        )


def check_sae_fits(sae: Any, model: nn.Module, layer: int) -> None:
    """Raise unless ``sae`` reads the residual stream after ``layer`` of ``model``.

    :func:`check_sae` with the model's own width and depth (PEFT wrappers are unwrapped).
    """
    from sts_lightning.model.capture import decoder_layers, model_width

    check_sae(sae, d_model=model_width(model), n_layers=len(decoder_layers(model)), layer=layer)

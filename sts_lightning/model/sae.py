"""The sparse autoencoder STS reads its latents from: load, check, encode, judge.

Read top to bottom, in the order a run uses it:

1. :func:`load_sae` turns a sae-lens id ``"release/sae_id"``, a local sae-lens directory or an
   in-memory object with ``encode`` into a frozen SAE in eval mode.
2. :func:`sae_layer`, :func:`sae_d_in`, :func:`sae_d_sae` and :func:`check_sae` make sure it reads
   the residual stream *after* decoder layer ``L`` of *this* model (the reference code encoded the
   MLP output by mistake). The layer checks live here; which layer a run captures is decided
   in :mod:`~sts_lightning.model.run_inputs`.
3. :func:`~sts_lightning.model.rows.keep_rows` drops the rare "massive activation" tokens
   before anything is encoded.
4. :func:`encode` gives float32 latents ``(n_tokens, d_sae)``; it works for a sae-lens SAE and
   for any object with ``encode`` (and ``W_enc`` or a ``cfg`` with ``d_in``/``d_sae``).
5. :class:`ReconstructionQuality` / :func:`evaluate_sae` say whether the SAE is any good on our
   activations: fraction of variance unexplained (FVU), mean L0 and dead-latent fraction,
   accumulated in a stream (a ``torchmetrics.Metric``).

sae-lens is imported inside the functions that need it: ``import sae_lens`` costs 6-7 s. Training
lives in :mod:`sts_lightning.model.sae_training`, which SAE a run reads in
:mod:`sts_lightning.model.sae_source`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from sts_lightning.config import positive_int

__all__ = [
    "ReconstructionQuality",
    "check_sae",
    "check_sae_fits",
    "encode",
    "evaluate_sae",
    "is_sae_dir",
    "load_sae",
    "resid_post_hook",
    "sae_d_in",
    "sae_d_sae",
    "sae_layer",
    "sae_param",
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


# ---------------------------------------------------------------- loading
_CFG_FILE = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME, without importing sae_lens
_WEIGHTS_FILE = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME


def is_sae_dir(path: Path) -> bool:
    """Whether ``path`` holds both files ``SAE.save_model`` writes (config and weights)."""
    return (path / _CFG_FILE).is_file() and (path / _WEIGHTS_FILE).is_file()


def load_sae(sae: Any, *, device: str | torch.device | None = None) -> Any:
    """Load an SAE and return it frozen (``requires_grad=False``) in eval mode.

    Args:
        sae: One of
            - a path to an existing local sae-lens directory (``cfg.json`` +
              ``sae_weights.safetensors``, as written by ``save_model``) →
              ``SAE.load_from_disk``; an existing path always wins over an id;
            - a sae-lens id ``"release/sae_id"`` (split at the first ``/`` after a known release,
              e.g. ``"gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"``) →
              ``SAE.from_pretrained``. This needs the hub or its local cache;
            - an object with ``encode`` (and ``decode`` for
              :func:`evaluate_sae`), returned as is.
        device: Where to put it; ``None`` loads to CPU and leaves an object where it is.

    Returns:
        The SAE, frozen, in eval mode.

    Raises:
        ValueError: ``sae`` is a path that is not a sae-lens directory, or an id that cannot be
            loaded (unknown release or id, or the hub is unreachable / ``HF_HUB_OFFLINE=1``).
        TypeError: ``sae`` is none of the above.
    """
    if isinstance(sae, (str, os.PathLike)):
        path = Path(sae).expanduser()
        if path.exists():
            loaded = _load_dir(path, device)
        elif isinstance(sae, str) and "/" in sae and not sae.startswith(("/", ".", "~")):
            loaded = _load_pretrained(sae, device)
        else:
            raise ValueError(
                f"`sae`={str(sae)!r} is neither an existing sae-lens directory nor a sae-lens id "
                "of the form 'release/sae_id'"
            )
    elif callable(getattr(sae, "encode", None)):
        loaded = sae.to(device) if device is not None and isinstance(sae, nn.Module) else sae
    else:
        raise TypeError(
            "`sae` must be a sae-lens id 'release/sae_id', a sae-lens directory or an object "
            f"with `encode`, got {type(sae).__name__}"
        )
    if isinstance(loaded, nn.Module):
        loaded.requires_grad_(False)
        loaded.eval()
    return loaded


def _load_dir(path: Path, device: str | torch.device | None) -> Any:
    if not is_sae_dir(path):
        raise ValueError(
            f"`sae`={str(path)!r} exists but is not a sae-lens directory: expected "
            f"{_CFG_FILE} and {_WEIGHTS_FILE} inside (written by `SAE.save_model`)"
        )
    from sae_lens import SAE
    from safetensors import SafetensorError

    try:
        return SAE.load_from_disk(path, device=str(device or "cpu"))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise ValueError(
            f"`sae`={str(path)!r} holds an unreadable or corrupted sae-lens SAE "
            f"({_CFG_FILE} + {_WEIGHTS_FILE}): {err!r}"
        ) from err


def _split_id(sae_id: str) -> tuple[str, str]:
    """Split ``"release/sae_id"``: sae ids may contain ``/``, released names never do."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, _, rest = sae_id.strip("/").partition("/")
    if release not in get_pretrained_saes_directory() and rest.count("/") >= 1:
        # Not a named release: read it as a hub repo id "owner/name/sae_id".
        owner_name, _, rest = rest.partition("/")
        release = f"{release}/{owner_name}"
    return release, rest


def _load_pretrained(sae: str, device: str | torch.device | None) -> Any:
    from sae_lens import SAE

    release, sae_id = _split_id(sae)
    try:
        return SAE.from_pretrained(release, sae_id, device=str(device or "cpu"))
    except Exception as err:  # sae-lens raises ValueError, hub errors, OSError...: one message
        offline = " (HF_HUB_OFFLINE=1 is set: only the local hub cache is used)"
        raise ValueError(
            f"`sae`={sae!r} is not a local directory and could not be loaded as sae-lens release "
            f"{release!r}, id {sae_id!r}{offline if os.environ.get('HF_HUB_OFFLINE') else ''}: "
            f"{err}. Pass a directory written by `save_model`, or train one with "
            "`sts_lightning.model.sae_training.train_sae`."
        ) from err


# ---------------------------------------------------------------- encoding
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
        sae: The SAE (see :func:`load_sae`).
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


# ---------------------------------------------------------------- quality
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

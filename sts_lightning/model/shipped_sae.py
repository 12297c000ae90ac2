"""The embedded default's SAE, shipped in the package: a first run reads it instead of training.

Training the README recipe's SAE (SmolLM2-135M-Instruct, layer 12, 4,608 TopK latents, 100k
rows) takes about 6.5 minutes on 2 CPU cores, a third of a first run. Its 21 MB of weights ship
in ``sts_lightning/assets/sae/<name>/``, where ``<name>`` is the directory name its cache entry
would have (:func:`~sts_lightning.model.sae_training.sae_cache_path`: a hash of the model, layer,
text mix, row rule and training recipe). :func:`~sts_lightning.model.sae_training.train_sae`
looks there after a cache miss, so only a run asking for exactly that SAE reads it; any other
recipe trains its own as before.

The artefact is generated, not hand-made: :func:`regenerate` trains it from scratch (the model
rebuilt from its wheel, neither cache nor shipped copy read) and
``sts-lightning shipped-sae --check`` compares the result byte for byte with the shipped files,
whose SHA-256 digests ``MANIFEST.json`` records beside them. ``--write`` replaces them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = [
    "SHIPPED_DIR",
    "compare",
    "manifest",
    "regenerate",
    "shipped_sae_dir",
    "verify",
    "write",
]

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "sae"
"""Where shipped SAEs live, one sae-lens directory each, named as their cache entry."""

RECIPE = "experiment_smollm2.yaml"
"""The shipped recipe whose SAE is shipped (the README's experiment; the predict recipes of the
embedded default name the same SAE)."""

_MANIFEST = "MANIFEST.json"


def shipped_sae_dir(name: str) -> Path | None:
    """The shipped sae-lens directory named ``name`` (a cache entry's name), or ``None``."""
    from sts_lightning.model.sae import is_sae_dir

    path = SHIPPED_DIR / name
    return path if is_sae_dir(path) else None


def _digests(directory: Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(directory.iterdir())
        if f.is_file()
    }


def manifest() -> dict[str, Any]:
    """``MANIFEST.json``: the shipped SAE's directory name and each file's SHA-256."""
    return json.loads((SHIPPED_DIR / _MANIFEST).read_text())


def verify() -> Path:
    """The shipped SAE's directory, after checking its files against the manifest.

    Raises:
        ValueError: A file is missing, extra or differs from its recorded digest.
    """
    recorded = manifest()
    path = SHIPPED_DIR / recorded["name"]
    found = _digests(path) if path.is_dir() else {}
    if found != recorded["files"]:
        raise ValueError(
            f"the shipped SAE in {path} does not match {_MANIFEST}: recorded "
            f"{recorded['files']}, found {found}; regenerate it with "
            "`sts-lightning shipped-sae --write`"
        )
    return path


def regenerate(job: Any, cache_dir: str | Path) -> Path:
    """Train the shipped SAE from scratch into ``cache_dir/sae/`` and return its directory.

    The recipe's model is loaded (rebuilt from its wheel on first use, cached in the default
    cache) and its SAE trained exactly as a first run would, with neither ``cache_dir``'s
    existing entries nor the shipped copy read.

    Args:
        job: The :data:`RECIPE` experiment (an ``ExperimentConfig``), whose model and SAE
            settings name the shipped SAE.
        cache_dir: An empty (or new) cache root to write the SAE into.

    Raises:
        ValueError: ``cache_dir`` already holds SAEs (a leftover would hide the training).
    """
    from sts_lightning.model.loading import default_cache_dir, load_model_and_tokenizer
    from sts_lightning.model.sae_source import resolve_run_sae

    root = Path(cache_dir) / "sae"
    if root.is_dir() and any(root.iterdir()):
        raise ValueError(f"`cache_dir` must hold no SAEs yet, got entries in {root}")
    model, tokenizer = load_model_and_tokenizer(
        job.model, dtype=job.dtype, cache_dir=default_cache_dir()
    )
    resolve_run_sae(job, model, tokenizer, cache_dir, shipped=False)
    (entry,) = root.iterdir()
    return entry


def compare(regenerated: Path) -> dict[str, bool]:
    """Per file of the shipped SAE: whether ``regenerated`` holds the same bytes."""
    recorded = manifest()
    found = _digests(regenerated)
    names = set(recorded["files"]) | set(found)
    same_name = regenerated.name == recorded["name"]
    return {n: same_name and found.get(n) == recorded["files"].get(n) for n in sorted(names)}


def write(regenerated: Path) -> Path:
    """Replace the shipped SAE (and its manifest) with ``regenerated``'s files."""
    import shutil

    for old in SHIPPED_DIR.iterdir() if SHIPPED_DIR.is_dir() else ():
        if old.is_dir():
            shutil.rmtree(old)
    target = SHIPPED_DIR / regenerated.name
    shutil.copytree(regenerated, target)
    record = {"name": regenerated.name, "recipe": RECIPE, "files": _digests(target)}
    (SHIPPED_DIR / _MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
    return target

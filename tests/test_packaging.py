"""`callbacks/` ships as `sts_lightning.callbacks`, never as a top-level `callbacks` package."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = (
    "import importlib.util, sts_lightning.callbacks as c; "
    "print(c.__file__); print(importlib.util.find_spec('callbacks'))"
)

_LIST_RECIPES = (
    "from sts_lightning.forecast.recipe import list_recipes, recipes_dir; "
    "print(recipes_dir(), *list_recipes())"
)


def _probe(cwd: Path, env: dict | None = None) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.split("\n")


def test_editable_install_maps_callbacks(tmp_path):
    # Run outside the repository so the folder itself is not on sys.path.
    file, top_level = _probe(tmp_path)[:2]
    assert Path(file) == ROOT / "callbacks" / "__init__.py"
    assert top_level == "None"


def test_wheel_ships_callbacks_under_package(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("sts_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sts_lightning/callbacks/__init__.py" in names
    assert "sts_lightning/experiment/run.py" in names  # subpackages must be listed too
    assert not any(n.startswith("callbacks/") for n in names)
    assert "sts_lightning/functional.py" in names
    # The recipes ship as package data: `sts-lightning recipes list|copy` after `pip install`.
    shipped = {n.split("/")[-1] for n in names if n.startswith("sts_lightning/recipes/")}
    assert shipped == {"__init__.py"} | {p.name for p in (ROOT / "recipes").glob("*.yaml")}
    assert not any(n.startswith("recipes/") for n in names)
    # The embedded default's SAE ships too (model/shipped_sae.py), with its manifest.
    assets = {n for n in names if n.startswith("sts_lightning/assets/sae/")}
    name = json.loads((ROOT / "sts_lightning/assets/sae/MANIFEST.json").read_text())["name"]
    assert assets == {
        "sts_lightning/assets/sae/MANIFEST.json",
        f"sts_lightning/assets/sae/{name}/cfg.json",
        f"sts_lightning/assets/sae/{name}/sae_weights.safetensors",
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(tmp_path / "site"),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    # -I would drop PYTHONPATH; instead check the file comes from the target dir.
    file, top_level = _probe(tmp_path, env)[:2]
    assert Path(file) == tmp_path / "site" / "sts_lightning" / "callbacks" / "__init__.py"
    assert top_level == "None"
    assert (tmp_path / "site" / "bin" / "sts-lightning").exists()
    listed = subprocess.run(
        [sys.executable, "-c", _LIST_RECIPES], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    where, *names = listed.stdout.split()
    assert Path(where) == tmp_path / "site" / "sts_lightning" / "recipes", listed.stderr
    assert "sft_arithmetic_smollm2" in names and "predict_arithmetic_smollm2" in names


def test_top_level_names_resolve_and_stay_lazy():
    code = (
        "import sys, sts_lightning as s; "
        "assert 'sae_lens' not in sys.modules and 'trl' not in sys.modules; "
        "[getattr(s, n) for n in s.__all__]; "
        "from sts_lightning.callbacks import STSCallback; "
        "assert s.STSCallback is STSCallback; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"

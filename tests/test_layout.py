"""The package's import contract: stages depend on earlier stages only.

``functional``/``stats``/``metric``/``config``/``reliability``/``paired`` (the core) ← ``data``
← ``model`` ← ``forecast`` ← ``monitor`` ← ``training`` ← the integrations (``callbacks``,
``hf``) ← ``experiment`` ← ``cli``.
Every import counts, lazy ones inside functions too: a lazy import that points the wrong way is
still a dependency, only a hidden one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "sts_lightning.functional": 0,
    "sts_lightning.stats": 0,
    "sts_lightning.metric": 0,
    "sts_lightning.config": 0,
    "sts_lightning.reliability": 0,
    "sts_lightning.paired": 0,
    "sts_lightning.data": 1,
    "sts_lightning.model": 2,
    "sts_lightning.forecast": 3,
    "sts_lightning.monitor": 4,
    "sts_lightning.training": 5,
    "sts_lightning.callbacks": 6,
    "sts_lightning.hf": 6,
    "sts_lightning.experiment": 7,
    "sts_lightning.cli": 8,
}


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name (its longest listed prefix); ``None`` if unlisted."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return None


def package_modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module, ``callbacks/`` as ``sts_lightning.callbacks``."""
    out = {}
    for base, package in ((ROOT / "sts_lightning", "sts_lightning"), (ROOT / "callbacks", None)):
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base).with_suffix("").parts
            prefix = ["sts_lightning"] + ([] if package else ["callbacks"])
            name = ".".join(prefix + [p for p in rel if p != "__init__"])
            out[name] = path
    return out


def imports(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``sts_lightning`` import in ``source``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from sts_lightning.data import prompts` depends on sts_lightning.data.prompts.
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, m) for line, m in found if m.startswith("sts_lightning.")]


def violations(modules: dict[str, Path]) -> list[str]:
    """Every import from a module to a module of a later stage."""
    out = []
    for name, path in modules.items():
        own = layer_of(name)
        if own is None:
            continue
        for line, target in imports(path.read_text()):
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                out.append(f"{where}:{line} ({name}) imports {target}")
    return out


def test_every_module_has_a_stage():
    unlisted = [n for n in package_modules() if layer_of(n) is None and n != "sts_lightning"]
    assert unlisted == []


def test_dependencies_point_one_way():
    assert violations(package_modules()) == []


def test_contract_catches_a_wrong_import(tmp_path):
    """The check itself fails on a deliberately wrong import (data → training)."""
    bad = tmp_path / "prompts.py"
    bad.write_text("def f():\n    from sts_lightning.training.sft import SFTModule\n")
    found = violations({"sts_lightning.data.prompts": bad})
    assert len(found) == 1 and "imports sts_lightning.training.sft.SFTModule" in found[0]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import sts_lightning.model.sae", ["sts_lightning.model.sae"]),
        ("from sts_lightning.data import prompts", ["sts_lightning.data.prompts"]),
        ("from . import x", []),
        ("import torch", []),
    ],
)
def test_imports_are_read(source, expected):
    assert [m for _, m in imports(source)] == expected


def _function_lengths(source: str) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function, its docstring left out."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            doc = (
                first.end_lineno - first.lineno + 1
                if isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                else 0
            )
            out.append((node.name, node.end_lineno - node.lineno + 1 - doc))
    return out


def test_files_and_functions_stay_small():
    """Files of at most 300 lines, functions of at most 60 (docstrings aside)."""
    too_long = []
    for name, path in package_modules().items():
        source = path.read_text()
        if len(source.splitlines()) > 300:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        too_long += [f"{name}.{f}: {n} lines" for f, n in _function_lengths(source) if n > 60]
    assert too_long == []

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


MAX_FILE_LINES = 500
"""A guard against run-away files only: files are split where a concept ends, not at a count."""


def test_files_and_functions_stay_small():
    """Files of at most 500 lines (a run-away guard), functions of at most 60 (docstrings
    aside)."""
    too_long = []
    for name, path in package_modules().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_FILE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        too_long += [f"{name}.{f}: {n} lines" for f, n in _function_lengths(source) if n > 60]
    assert too_long == []


def _module_names(name: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``ImportFrom`` in module ``name`` reads from (relative resolved)."""
    if node.level == 0:
        return node.module
    package = name.split(".")[: -node.level] if node.level else []
    return ".".join(package + ([node.module] if node.module else []))


def private_reach_ins(modules: dict[str, Path]) -> list[str]:
    """Every ``_private`` name one package module takes from another: imported by name
    (``from sts_lightning.x import _y``) or read off an imported module (``F._y``)."""
    out = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("sts_lightning") and a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                source = _module_names(name, node)
                if not source or not source.startswith("sts_lightning"):
                    continue
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and source != name:
                        out.append(f"{name}:{node.lineno} imports {a.name} from {source}")
                    if f"{source}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{source}.{a.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and aliases[node.value.id] != name
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                target = aliases[node.value.id]
                out.append(f"{name}:{node.lineno} reads {node.attr} of {target}")
    return out


def test_no_module_takes_a_private_name_of_another():
    assert private_reach_ins(package_modules()) == []


def test_private_reach_in_check_catches_both_forms(tmp_path):
    bad = tmp_path / "choices.py"
    bad.write_text(
        "from sts_lightning import functional as F\n"
        "from sts_lightning.data.domains import _format_mmlu\n"
        "F._check_latents([0], 3)\n"
    )
    functional = tmp_path / "functional.py"
    functional.write_text("def _check_latents(latents, d_sae):\n    return latents\n")
    modules = {"sts_lightning.data.choices": bad, "sts_lightning.functional": functional}
    found = private_reach_ins(modules)
    assert len(found) == 2
    assert "imports _format_mmlu from sts_lightning.data.domains" in found[0]
    assert "reads _check_latents of sts_lightning.functional" in found[1]


def module_level_imports(name: str, source: str, known: set[str]) -> set[str]:
    """Package modules ``name`` imports when it is itself imported (top-level statements,
    ``if``/``try`` blocks included; imports inside functions and ``TYPE_CHECKING`` left out)."""
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _module_names(name, node) or ""
                # `from pkg import mod` imports the module; `from mod import f` the module too.
                for a in node.names:
                    sub = f"{source}.{a.name}"
                    found.add(sub if sub in known else source)

    visit(ast.parse(source).body)
    return {m for m in found if m in known and m != name}


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """Every circle of module-level imports among ``modules`` (one path per circle found)."""
    known = set(modules)
    graph = {n: module_level_imports(n, p.read_text(), known) for n, p in modules.items()}
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the stack, 2 done

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif state[nxt] == 0:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            walk(node, [node])
    return cycles


def test_no_import_circle_among_package_modules():
    assert import_cycles(package_modules()) == []


def test_import_circle_check_finds_a_circle(tmp_path):
    files = {}
    for name, text in {
        "a": "from sts_lightning.data import b\n",
        "b": "import sts_lightning.data.c\n",
        "c": "from sts_lightning.data.a import f\ndef g():\n    import sts_lightning.data.b\n",
    }.items():
        files[f"sts_lightning.data.{name}"] = tmp_path / f"{name}.py"
        files[f"sts_lightning.data.{name}"].write_text(text)
    assert import_cycles(files) == [
        [
            "sts_lightning.data.a",
            "sts_lightning.data.b",
            "sts_lightning.data.c",
            "sts_lightning.data.a",
        ]
    ]
    # Only the lazy import closes c -> b: without the a -> b edge there is no circle.
    files["sts_lightning.data.a"].write_text("x = 1\n")
    assert import_cycles(files) == []

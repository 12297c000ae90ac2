"""Bad inputs are refused before a model loads or an SAE trains, with the usual messages.

Each command runs with an empty ``STS_CACHE_DIR`` and a model loader that fails the test if it
is called: the error must come from the inputs, the cache must stay empty.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sts_lightning.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty cache directory, and a model loader that must not be reached."""
    from sts_lightning.model import embedded, loading, sae_source

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("STS_CACHE_DIR", str(cache))

    def never(*args, **kwargs):
        raise AssertionError(
            "a model was loaded (or an SAE resolved) before the inputs were checked"
        )

    monkeypatch.setattr(loading, "load_model_and_tokenizer", never)
    monkeypatch.setattr(embedded, "smollm2_dir", never)
    monkeypatch.setattr(sae_source, "resolve_run_sae", never)
    return cache


def _refused(argv: list[str], capsys) -> str:
    """The ``error:`` line of a command that must exit with status 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ")
    return line


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train_file", "{tmp}/missing.jsonl"], "missing.jsonl"),
        (["--domains", "[math, astrology]"], "`name` must be one of the domains"),
        (["--train_set", "cooking"], "`name` must be one of the training sets"),
        (["--domain_files", '{{"mine": "{tmp}/nowhere.jsonl"}}'], "nowhere.jsonl"),
        (["--train_file", "{tmp}/bad.jsonl"], "bad.jsonl:1"),
    ],
)
def test_predict_refuses_bad_inputs_before_any_model(args, message, empty_cache, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"text": 3}\n')
    args = [a.format(tmp=tmp_path) for a in args]
    line = _refused(["predict", "--output_dir", str(tmp_path / "out"), *args], capsys)
    assert message in line
    assert "a model was loaded" not in line
    assert list(empty_cache.iterdir()) == []


def test_compare_refuses_a_missing_set_before_any_model(empty_cache, tmp_path, capsys):
    sets = json.dumps({"mine": str(tmp_path / "missing.jsonl"), "arith": "arithmetic"})
    argv = ["predict", "--output_dir", str(tmp_path / "out"), "--train_sets", sets]
    line = _refused(argv, capsys)
    assert "`train_sets['mine']`=" in line and "cannot be read as a training set" in line
    assert list(empty_cache.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "[arithmetic, {tmp}/missing.jsonl]"], "is not a built-in training set"),
        (["--tasks", "[arithmetic, {tmp}/no_answer.jsonl]"], "answer"),
        (["--contrast_task", "{tmp}/missing.jsonl"], "is not a built-in training set"),
        (["--domain_files", '{{"mine": "{tmp}/nowhere.jsonl"}}'], "nowhere.jsonl"),
        (["--domain_files", '{{"mine": "{tmp}/short.jsonl"}}'], "has 2 items; at least 4"),
        (["--domains", "[math, law, astrology]"], "`domains` entries ['astrology']"),
    ],
)
def test_experiment_refuses_bad_inputs_before_any_model(
    args, message, empty_cache, tmp_path, capsys
):
    _jsonl(tmp_path / "no_answer.jsonl", [{"prompt": "2 + 2?"}] * 3)
    _jsonl(tmp_path / "short.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    args = [a.format(tmp=tmp_path) for a in args]
    recipe = str(ROOT / "recipes" / "experiment_mmlu_smollm2.yaml")
    argv = ["experiment", "--config", recipe, "--output_dir", str(tmp_path / "out"), *args]
    line = _refused(argv, capsys)
    assert message in line
    assert "a model was loaded" not in line
    assert list(empty_cache.iterdir()) == []

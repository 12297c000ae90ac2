"""The `sts-lightning` command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sts_lightning.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_demo_recovers_planted_shift(capsys):
    assert main(["demo", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "planted latents recovered: 100/100" in out
    pearson = float(re.search(r"pearson=([-\d.]+)", out).group(1))
    assert pearson > 0.8  # the planted usage drives both the score and the realised change


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``sts-lightning argv``."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_shows_field_docstrings(capsys):
    code, out, _ = _run(["predict", "--help"], capsys)
    assert code == 0
    # The docstring under `PredictConfig.k`, not only its type.
    assert "Size of the shifted-latent set D" in " ".join(out.split())
    code, out, _ = _run(["experiment", "--help"], capsys)
    assert code == 0 and "Where the base and fine-tuned models" in " ".join(out.split())


def test_version(capsys):
    from importlib.metadata import version

    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out.strip() == f"sts-lightning {version('sts-lightning')}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama, tiny_tokenizer, tiny_sae):
    """A tiny checkpoint and SAE on disk: a ``predict`` that fails late still fails fast."""
    root = tmp_path_factory.mktemp("tiny_run")
    for saver in (tiny_llama.save_pretrained, tiny_tokenizer.save_pretrained):
        saver(root / "model")
    tiny_sae.save_model(root / "sae")
    (root / "broken.jsonl").write_text('{"prompt": "ok", "answer": "yes"}\n{"prompt": \n')
    (root / "broken.yaml").write_text("predict:\n  k: [3\n")
    return root


def _predict(root, *extra: str) -> list[str]:
    common = ["--model", str(root / "model"), "--sae", str(root / "sae")]
    return ["predict", *common, "--output_dir", str(root / "out"), *extra]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--predict.k", "abc"], 'key "predict.k": Expected a'),  # wrong type
        (["--predict.k", "0"], "`k` must be a positive int, got 0"),  # out of range
        (["--config", "{root}/nope.yaml"], "File does not exist"),  # missing recipe
        (["--config", "{root}/broken.yaml"], "config"),  # broken recipe
        (["--train_file", "{root}/nope.jsonl"], "nope.jsonl: no such file"),  # missing data
        (["--train_file", "{root}/broken.jsonl"], "broken.jsonl:2: not a JSON object"),
        (["--domains", "[nope]"], "got 'nope'"),  # unknown domain
        (["--model", "{root}/no_model"], "`model`="),  # unknown model
    ],
    ids=[
        "type",
        "range",
        "missing-recipe",
        "broken-recipe",
        "missing-file",
        "broken-file",
        "domain",
        "model",
    ],
)
def test_user_errors_are_one_line_with_status_2(tiny_run, capsys, extra, expected):
    extra = [e.format(root=tiny_run) for e in extra]
    code, _, err = _run(_predict(tiny_run, *extra), capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err and "usage:" not in err


def test_unknown_task_and_domain_of_the_experiment(tiny_run, capsys):
    code, _, err = _run(["experiment", "--domains", "[math, law, nope]"], capsys)
    assert code == 2 and "`domains` entries ['nope'] are not built-in domains" in err
    common = ["--model", str(tiny_run / "model"), "--sae", str(tiny_run / "sae")]
    common += ["--predict.k", "8", "--raw_k", "8", "--output_dir", str(tiny_run / "exp")]
    code, _, err = _run(["experiment", *common, "--tasks", "[arithmetic, nope]"], capsys)
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "`tasks`='nope' is not a built-in task, file or reachable dataset" in line
    assert "Couldn't reach" not in err


def test_debug_shows_the_traceback(tiny_run, capsys):
    with pytest.raises(ValueError, match="must be a positive int"):
        main([*_predict(tiny_run, "--predict.k", "0"), "--debug"])


def test_each_log_line_printed_once(tmp_path):
    # Lightning's `lightning` logger has its own handler; a root handler would print twice.
    script = tmp_path / "log_once.py"
    script.write_text(
        "import logging, lightning.pytorch\n"
        "from sts_lightning.cli import entry as cli\n"
        "def fake(argv):\n"
        "    logging.getLogger('lightning.pytorch.trainer').info('GPU available: False')\n"
        "    logging.getLogger('sts_lightning.forecast').info('forecast done')\n"
        "    return 0\n"
        "cli._dispatch = fake\n"
        "raise SystemExit(cli.main([]))\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    lines = run.stderr.splitlines()
    assert sum("GPU available" in line for line in lines) == 1, lines
    assert lines.count("forecast done") == 1, lines


def test_recipes_list_and_copy(tmp_path, capsys):
    code, out, _ = _run(["recipes", "list"], capsys)
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and names == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    code, out, _ = _run(["recipes", "copy", "sft_arithmetic_smollm2", str(tmp_path)], capsys)
    copied = tmp_path / "sft_arithmetic_smollm2.yaml"
    assert code == 0 and str(copied) in out
    assert copied.read_text() == (ROOT / "recipes" / "sft_arithmetic_smollm2.yaml").read_text()
    code, _, err = _run(["recipes", "copy", "sft_arithmetic_smollm2", str(tmp_path)], capsys)
    assert code == 2 and "exists" in err  # never overwritten
    code, _, err = _run(["recipes", "copy", "nope"], capsys)
    assert code == 2 and "`name`='nope' is not a shipped recipe" in err

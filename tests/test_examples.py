"""The README's two integration examples run end to end on tiny local models."""

from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def local(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch):
    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    tiny_sae.save_model(tmp_path / "sae")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return tmp_path


def _common(local):
    return [
        "--model",
        str(local / "model"),
        "--sae",
        str(local / "sae"),
        "--steps",
        "4",
        "--every",
        "2",
        "--k",
        "8",
        "--budget",
        "120",
        "--domains",
        "math",
        "law",
        "code",
    ]


def test_lightning_example(local):
    import lightning_sts

    out = local / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lightning_sts.main([*_common(local), "--out", str(out)])
    (metrics,) = out.glob("lightning_logs/version_0/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    keys = set().union(*rows)
    assert {"sts/pred/act/law", "sts/shift/overlap@8", "sts/corr/pearson"} <= keys
    assert [r["step"] for r in rows if r.get("sts/shift/total")] == ["2", "4"]


def test_trl_example(local):
    import trl_sts

    out = local / "trl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trl_sts.main([*_common(local), "--out", str(out)])
    history = json.loads((out / "sts_history.json").read_text())
    assert any("sts/pred/act/math" in h for h in history)
    assert [h["step"] for h in history if "sts/shift/total" in h] == [2, 4]
    assert any("sts/corr/pearson" in h for h in history)
    assert (out / "sts" / "realised_shift.png").exists()
    sys.modules.pop("trl_sts", None)

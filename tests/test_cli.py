"""The `sts-lightning` command line."""

from __future__ import annotations

import re

import pytest

from sts_lightning.cli import main


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

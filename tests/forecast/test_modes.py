"""The mode registry: each STS mode defined once, and every consumer agreeing with it."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sts_lightning.forecast.modes import (
    MODES,
    PRIMARY,
    RANK_MODES,
    check_mode,
    contrast_modes,
    raw_twin,
    raw_twins,
)
from sts_lightning.forecast.prediction import DomainScore
from sts_lightning.stats import LatentMoments, PairedShift

ROOT = Path(__file__).resolve().parents[2]


def _domain(seed: int = 0, icl: bool = True, d_sae: int = 12) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    base = torch.relu(torch.randn(40, d_sae, generator=g))
    moments = LatentMoments(d_sae)
    moments.update(base)
    shift = None
    if icl:
        shift = PairedShift(d_sae)
        shift.update(base, torch.relu(base + 0.3 * torch.randn(40, d_sae, generator=g)))
    return SimpleNamespace(moments=moments, shift=shift)


def test_registry_is_the_papers_modes_in_report_order():
    assert tuple(MODES) == ("act", "icl", "notebook", "signed")
    assert PRIMARY == ("act", "icl")
    assert RANK_MODES == ("act", "icl", "notebook")
    assert contrast_modes() == ("act_contrast", "icl_contrast")
    assert [m.label for m in MODES.values()] == ["STS_act", "STS_ICL", "notebook", "signed"]


def test_each_mode_scores_as_its_statistic():
    domain, top = _domain(), torch.tensor([0, 3, 5])
    signed = torch.linspace(-1, 1, 12)
    expected = {
        "act": domain.moments.sts_act(top),
        "icl": domain.shift.sts_icl(top),
        "notebook": domain.moments.sts_notebook(top),
        "signed": domain.moments.sts_signed(signed, top),
    }
    assert {n: m.score(domain, top, signed) for n, m in MODES.items()} == {
        n: float(v) for n, v in expected.items()
    }
    without_icl = _domain(icl=False)
    assert MODES["icl"].score(without_icl, top, signed) is None
    assert MODES["act"].score(without_icl, top, signed) is not None


@pytest.mark.parametrize("name", RANK_MODES)
def test_ranking_vectors_reproduce_the_point_scores(name):
    """The bootstrap scores a set from domain vectors: over the full D it must give the score."""
    domain, top = _domain(seed=1), torch.tensor([1, 2, 7, 11])
    mode = MODES[name]
    vector = mode.domain_vector(domain.moments.compute(), domain.shift.feature_shift())
    from_vector = float(mode.combine(vector.double()[top]))
    assert from_vector == pytest.approx(mode.score(domain, top, torch.zeros(12)), rel=1e-6)


def test_raw_twins_pair_icl_modes_with_raw_icl():
    assert raw_twins() == {
        "act": "raw_act",
        "notebook": "raw_act",
        "signed": "raw_act",
        "act_contrast": "raw_act",
        "icl": "raw_icl",
        "icl_contrast": "raw_icl",
    }
    assert list(raw_twins()) == ["act", "notebook", "signed", "act_contrast", "icl", "icl_contrast"]
    assert raw_twin("icl") == "raw_icl"


def test_check_mode_names_the_field():
    assert check_mode("rank_mode", "notebook", RANK_MODES) is MODES["notebook"]
    with pytest.raises(
        ValueError, match=r"`rank_mode` must be one of \('act', 'icl', 'notebook'\)"
    ):
        check_mode("rank_mode", "signed", RANK_MODES)


def test_domain_score_has_a_field_per_mode():
    assert set(MODES) <= {f.name for f in fields(DomainScore)}


def test_the_mode_list_is_written_once():
    """No literal tuple, list or set of two or more mode names outside the registry."""
    found = []
    for path in [*(ROOT / "sts_lightning").rglob("*.py"), *(ROOT / "callbacks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = [
                    e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in MODES
                ]
                if len(names) >= 2:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {names}")
    assert found == []

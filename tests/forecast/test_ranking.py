"""Ranking training sets: bootstrap over training items, against a from-rows oracle."""

from __future__ import annotations

import pytest
import torch

from sts_lightning import functional as F
from sts_lightning.forecast.comparison import Comparison, ItemSums
from sts_lightning.forecast.prediction import DomainScore, Prediction
from sts_lightning.forecast.ranking import bootstrap_scores, rank_sets

D_SAE, K = 40, 5


def _items(g, n_items, planted, strength=1.0):
    """Rows per item (base, icl) with ``planted`` latents shifted; returns rows and ItemSums."""
    rows = []
    for _ in range(n_items):
        n = int(torch.randint(2, 6, (), generator=g))
        base = torch.rand(n, D_SAE, generator=g, dtype=torch.float64)
        icl = base + 0.3 * torch.randn(n, D_SAE, generator=g, dtype=torch.float64)
        icl[:, planted] += strength * torch.rand(n, len(planted), generator=g, dtype=torch.float64)
        rows.append((base, icl))
    diffs = [i - b for b, i in rows]
    items = ItemSums(
        candidates=torch.arange(D_SAE),
        sum_sq=torch.stack([d.square().sum(0) for d in diffs]),
        sum=torch.stack([d.sum(0) for d in diffs]),
        n_rows=torch.tensor([float(len(d)) for d in diffs], dtype=torch.float64),
    )
    return rows, items


def _domains(g):
    """Domain 'math' uses latents 0-4, 'law' latents 20-24, 'art' neither much."""
    vectors = {}
    for name, used in (("math", range(0, 5)), ("law", range(20, 25)), ("art", [])):
        mean = 0.1 * torch.rand(D_SAE, generator=g, dtype=torch.float64)
        mean[list(used)] += 1.0
        vectors[name] = {"act": mean, "notebook": mean.square(), "icl": mean / 2}
    return vectors


def _prediction(rows, vectors):
    base = torch.cat([b for b, _ in rows]).float()
    icl = torch.cat([i for _, i in rows]).float()
    shift, signed = F.feature_shift(base, icl), F.signed_shift(base, icl)
    top = F.top_shifted(shift, k=K)
    scores = {
        d: DomainScore(
            float(v["act"][top].sum()),
            float(v["notebook"][top].mean()),
            0.0,
            float(v["icl"][top].sum()),
            1,
            0,
            1,
            1,
        )
        for d, v in vectors.items()
    }
    return Prediction(scores, shift, signed, top, 1, {}, {}, 1.0, {})


def _comparison(
    seed=0, sets=(("math_set", range(0, 5)), ("law_set", range(20, 25))), n=60, strength=1.0
):
    g = torch.Generator().manual_seed(seed)
    vectors = _domains(g)
    preds, items = {}, {}
    for name, planted in sets:
        rows, items[name] = _items(g, n, list(planted), strength)
        preds[name] = _prediction(rows, vectors)
    return Comparison(preds, items, vectors, 1.0)


def test_one_resample_equals_the_from_rows_oracle():
    g = torch.Generator().manual_seed(1)
    vectors = _domains(g)
    rows, items = _items(g, 12, [0, 1, 2])
    # The resample's item indices, drawn the way bootstrap_scores documents (seeded randint).
    idx = torch.randint(12, (1, 12), generator=torch.Generator().manual_seed(7))[0]
    base = torch.cat([rows[i][0] for i in idx])
    icl = torch.cat([rows[i][1] for i in idx])
    top = F.top_shifted(F.feature_shift(base, icl), k=K)
    expected = [float(F.sts_act(vectors[d]["act"].expand(1, -1), top)) for d in vectors]
    got = bootstrap_scores(items, vectors, k=K, n_bootstrap=1, seed=7)[0]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_intervals_reproducible_with_a_seed():
    cmp = _comparison(strength=0.1)  # weak: D changes between resamples
    a = rank_sets(cmp, ["math"], ["law"], n_bootstrap=200, seed=3)
    b = rank_sets(cmp, ["math"], ["law"], n_bootstrap=200, seed=3)
    c = rank_sets(cmp, ["math"], ["law"], n_bootstrap=200, seed=4)
    assert a.to_dict() == b.to_dict()
    assert a.score != c.score and a.score["math_set"][1] < a.score["math_set"][2]


@pytest.mark.parametrize("seed", range(6))
def test_intervals_shrink_as_training_items_grow(seed):
    """Ten latents shifted by graded amounts, k = 5: which five win is uncertain with few
    items and settles with many; domains weigh the latents by continuous random amounts."""
    strengths = torch.linspace(0.2, 0.4, 10, dtype=torch.float64)

    def spread(n):
        g = torch.Generator().manual_seed(seed)
        vectors = {d: {"act": torch.rand(D_SAE, generator=g, dtype=torch.float64)} for d in "abc"}
        _, items = _items(g, n, list(range(10)), strength=strengths)
        return bootstrap_scores(items, vectors, k=K, n_bootstrap=300, seed=seed).std(0).sum()

    small, medium, large = (spread(n) for n in (20, 160, 1280))
    assert small > medium > large


def test_identical_items_give_a_zero_width_interval():
    cmp = _comparison(n=1)  # one item: every resample is the set itself
    r = rank_sets(cmp, ["math"], n_bootstrap=50)
    for point, low, high in r.score.values():
        assert low == pytest.approx(point) and high == pytest.approx(point)


def test_the_planted_set_ranks_first_and_copies_tie():
    sets = (("law_set", range(20, 25)), ("math_set", range(0, 5)))
    r = rank_sets(_comparison(sets=sets), ["math"], ["law"], n_bootstrap=300)
    assert r.order == ["math_set", "law_set"]
    assert r.p_beats["math_set"]["law_set"] > 0.99 and not r.ties()
    lo, hi = r.score["math_set"][1:], r.score["law_set"][1:]
    assert lo[0] > hi[1]  # separated intervals
    # Two sets drawn the same way cannot be told apart.
    twins = (("a", range(0, 5)), ("b", range(0, 5)))
    r2 = rank_sets(_comparison(seed=5, sets=twins), ["math"], ["law"], n_bootstrap=300)
    assert len(r2.ties()) == 1 and 0.05 < r2.p_beats[r2.order[0]][r2.order[1]] < 0.95
    assert "(tie)" in r2.table()


def test_ranking_score_matches_its_definition():
    cmp = _comparison()
    r = rank_sets(cmp, ["math"], ["law", "art"], n_bootstrap=20)
    pts = {s: {d: sc.act for d, sc in p.domains.items()} for s, p in cmp.predictions.items()}
    m = {d: sum(pts[s][d] for s in pts) / len(pts) for d in cmp.domains}
    for s in pts:
        want = (
            pts[s]["math"] / m["math"] - (pts[s]["law"] / m["law"] + pts[s]["art"] / m["art"]) / 2
        )
        assert r.score[s][0] == pytest.approx(want)


@pytest.mark.parametrize(
    "target, protected, message",
    [
        (["maths"], [], r"`target` names \['maths'\], not among the domains"),
        (["math"], ["lawyers"], r"`protected` names \['lawyers'\]"),
        (["math"], ["math"], "both name"),
        ([], [], "at least one"),
    ],
)
def test_bad_roles_are_named(target, protected, message):
    with pytest.raises(ValueError, match=message):
        rank_sets(_comparison(), target, protected)


def test_bad_mode_and_level():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        rank_sets(_comparison(), ["math"], mode="signed")
    with pytest.raises(ValueError, match="`level`"):
        rank_sets(_comparison(), ["math"], level=1.5)

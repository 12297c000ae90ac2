"""Pair selection: the plan encodes what eager encoding gave, and extraction holds one batch."""

from __future__ import annotations

import random
import weakref

import torch

from sts_lightning.data.prompts import EncodedPrompt, Example, build_pairs
from sts_lightning.forecast import engine
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.pairs import PairPlan, select_pairs
from sts_lightning.stats import LatentMoments, PairedShift

TRAIN = [Example(f"What is {a} * {b}?", f"It is {a * b}.") for a in range(2, 9) for b in range(6)]
UNRELATED = [Example(f"Spell {w} backwards.", w[::-1]) for w in ("cat", "dog", "sun", "tree")]
CFG = PredictConfig(layer=1, k=8, n_demos=2, train_tokens=150, batch_size=2, progress=False)


def _eager(tokenizer, examples, n_demos, budget, exclude, seed, pool=None):
    """The selection as it was: every chosen pair encoded and kept, longest ICL first."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    chosen, n = [], 0
    for first in range(0, len(order), 32):
        queries = [examples[i] for i in order[first : first + 32]]
        for base, icl in build_pairs(
            tokenizer, queries, n_demos, seed=seed, demo_pool=pool or examples
        ):
            start, end = base.span("all")
            n += sum(t not in exclude for t in base.input_ids[start:end])
            chosen.append((base, icl))
            if n >= budget:
                return sorted(chosen, key=lambda p: -len(p[1].input_ids)), n
    return sorted(chosen, key=lambda p: -len(p[1].input_ids)), n


def test_plan_encodes_the_pairs_eager_selection_kept(tiny_tokenizer):
    exclude = set(tiny_tokenizer.all_special_ids)
    for n_demos, pool, budget in [(2, None, 150), (1, UNRELATED, 10**6), (0, None, 40)]:
        plan, n = select_pairs(
            tiny_tokenizer, TRAIN, n_demos, "all", budget, CFG, exclude, seed=4, demo_pool=pool
        )
        want, want_n = _eager(tiny_tokenizer, TRAIN, n_demos, budget, exclude, 4, pool)
        assert isinstance(plan, PairPlan) and n == want_n and len(plan) == len(want)
        assert list(plan) == want  # every id, span and demonstration index, in run order
        assert plan.side("icl")[1:3] == [icl for _, icl in want[1:3]]
        assert plan[-1] == want[-1] and plan[0:2] == want[0:2]


def test_extraction_holds_one_batch_of_prompts(monkeypatch, tiny_llama, tiny_tokenizer, tiny_sae):
    alive = [0]  # EncodedPrompts not yet freed
    init = EncodedPrompt.__init__

    def forget() -> None:
        alive[0] -= 1

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        alive[0] += 1
        weakref.finalize(self, forget)

    monkeypatch.setattr(EncodedPrompt, "__init__", tracked)
    most = []
    real = engine.iter_span_activations

    def rows(*args, **kwargs):
        most.append(alive[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "iter_span_activations", rows)
    extractor = engine.Extractor(tiny_llama, tiny_sae, tiny_tokenizer, 1, CFG)
    plan, _ = extractor.select(TRAIN, 2, "all", 10**6, seed=0)
    stats = engine.Statistics(shift=PairedShift(64, **engine.LOCAL))
    counts = extractor.run(plan, "all", "test", stats)
    assert len(plan) == len(TRAIN) and counts["n_tokens"] > 0
    assert max(most) <= 2 * CFG.batch_size  # a base and an ICL batch, not 2 × 42 prompts

    # The same statistics, to the bit, as from the pairs encoded up front.
    eager = engine.Statistics(shift=PairedShift(64, **engine.LOCAL))
    extractor.run(list(plan), "all", "test", eager)
    for key in ("sum_diff", "sum_sq_diff", "n_tokens"):
        assert torch.equal(getattr(stats.shift, key), getattr(eager.shift, key))
    moments = engine.Statistics(moments=LatentMoments(64, **engine.LOCAL))
    assert extractor.run(plan, "all", "test", moments) == counts  # unpaired: base pass only


def test_rows_fed_in_slices_give_the_same_statistics(tiny_llama, tiny_tokenizer, tiny_sae):
    extractor = engine.Extractor(tiny_llama, tiny_sae, tiny_tokenizer, 1, CFG)
    plan, _ = extractor.select(TRAIN, 2, "all", 10**6, seed=0)

    def fill(rows_per_update: int):
        extractor.rows_per_update = rows_per_update
        stats = engine.Statistics(
            moments=LatentMoments(64, **engine.LOCAL),
            shift=PairedShift(64, **engine.LOCAL),
            raw_shift=PairedShift(32, **engine.LOCAL),
        )
        return extractor.run(plan, "all", "test", stats), stats

    (whole_counts, whole), (sliced_counts, sliced) = fill(10**6), fill(3)
    assert whole_counts == sliced_counts
    for name in ("moments", "shift", "raw_shift"):
        for key, value in getattr(whole, name).compute().items():
            got = getattr(sliced, name).compute()[key]  # float32 partial sums: rounding only
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-9)


def test_predict_many_per_item_sums_follow_the_slices(monkeypatch, tiny_llama, tiny_tokenizer):
    from sts_lightning.forecast.compare import predict_many
    from tests.conftest import make_tiny_sae

    sae = make_tiny_sae()
    sets = {"mul": TRAIN[:12], "spell": UNRELATED}
    domains = {"law": [Example(f"Statute {i} was repealed.", "Yes.") for i in range(4)]}
    cfg = PredictConfig(layer=1, k=4, n_demos=1, domain_demos=1, max_norm=1e9, progress=False)

    def run(rows_per_update: int):
        monkeypatch.setattr(engine.Extractor, "rows_per_update", rows_per_update)
        return predict_many(tiny_llama, tiny_tokenizer, sae, sets, domains, cfg, n_candidates=8)

    whole, sliced = run(10**6), run(2)
    for name in sets:
        a, b = whole.items[name], sliced.items[name]
        assert torch.equal(a.candidates, b.candidates) and torch.equal(a.n_rows, b.n_rows)
        torch.testing.assert_close(b.sum_sq, a.sum_sq, rtol=1e-5, atol=1e-9)  # rounding only

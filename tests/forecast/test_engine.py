"""The forecast engine: row filtering and counting, pair selection, and the public steps."""

from __future__ import annotations

import math

import pytest
import torch

from sts_lightning.data.prompts import Example
from sts_lightning.forecast import engine
from sts_lightning.forecast import predict as steps
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.model.rows import massive_threshold
from sts_lightning.stats import LatentMoments, PairedShift

TRAIN = [Example(f"What is {a} - {b}?", f"It is {a - b}.") for a in range(5, 9) for b in range(3)]
DOMAINS = {"law": [Example(f"Statute {i} was repealed.") for i in range(4)]}
DOMAINS["code"] = [Example(f"print({i} * x)", f"# prints {i}x") for i in range(4)]
CFG = PredictConfig(
    layer=1, k=8, n_demos=1, domain_demos=1, train_tokens=60, domain_tokens=40, progress=False
)


def _fixed_rows(extractor: engine.Extractor, batches: dict[str, list[torch.Tensor]]) -> list[str]:
    """Make ``extractor`` read ``batches["base"]``/``["icl"]`` instead of the model; log passes."""
    calls = []

    def rows(prompts, span, desc):
        which = "base" if desc is not None else "icl"  # the ICL pass has no progress bar
        calls.append(which)
        # Batch i holds the rows of pair i.
        return iter((b, torch.full((len(b),), i)) for i, b in enumerate(batches[which]))

    extractor._rows = rows
    return calls


def test_non_finite_and_massive_rows_are_dropped_in_pairs_and_counted(
    tiny_llama, tiny_tokenizer, tiny_sae
):
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(5, 32, generator=g), torch.randn(3, 32, generator=g)]
    icl = [b + 0.1 for b in base]
    base[0][1, 4] = float("nan")  # non-finite base row
    icl[0][3] *= 1000.0  # massive ICL row: its base twin goes too
    base[1][0] *= 1000.0  # massive in the second batch: judged by the first batch's threshold
    extractor = engine.Extractor(
        tiny_llama, tiny_sae, tiny_tokenizer, 1, PredictConfig(progress=False)
    )
    calls = _fixed_rows(extractor, {"base": base, "icl": icl})
    stats = engine.Statistics(
        shift=PairedShift(64, **engine.LOCAL), raw_moments=LatentMoments(32, **engine.LOCAL)
    )
    counts = extractor.run([(None, None)] * 2, "all", "test", stats)
    assert counts == {"n_tokens": 5, "n_dropped": 3}
    assert calls == ["base", "icl"]
    assert extractor.max_norm == massive_threshold(base[0], 10.0)  # finite rows only
    assert int(stats.shift.n_tokens) == 5
    kept = torch.cat([base[0][[0, 2, 4]], base[1][1:]])
    torch.testing.assert_close(stats.raw_moments.compute()["mean"].float(), kept.mean(0))


def test_unpaired_statistics_skip_the_icl_pass(tiny_llama, tiny_tokenizer, tiny_sae):
    extractor = engine.Extractor(tiny_llama, tiny_sae, tiny_tokenizer, 1, CFG)
    calls = _fixed_rows(extractor, {"base": [torch.randn(4, 32)], "icl": []})
    stats = engine.Statistics(moments=LatentMoments(64, **engine.LOCAL))
    assert not stats.paired
    assert extractor.run([(None, None)], "all", "test", stats)["n_tokens"] == 4
    assert calls == ["base"]


def test_select_pairs_is_seeded_and_stops_at_the_budget(tiny_tokenizer):
    exclude = set(tiny_tokenizer.all_special_ids)

    def pick(seed, pool=None):
        pairs, n = engine.select_pairs(
            tiny_tokenizer, TRAIN, 1, "all", 30, CFG, exclude, seed=seed, demo_pool=pool
        )
        return [b.input_ids for b, _ in pairs], [i.input_ids for _, i in pairs], n

    base, icl, n = pick(0)
    assert pick(0) == (base, icl, n)  # deterministic
    assert pick(1)[0] != base  # another seed, other queries
    assert n >= 30 and len(base) < len(TRAIN)
    other_base, other_icl, _ = pick(0, DOMAINS["law"])
    # The demonstration pool changes the ICL prefix, never which queries are chosen.
    assert sorted(other_base) == sorted(base) and sorted(other_icl) != sorted(icl)
    assert engine.select_pairs(tiny_tokenizer, TRAIN, 1, "all", 10**6, CFG, exclude)[1] < 10**6


def test_check_examples(tiny_tokenizer):
    assert engine.check_examples("x", tuple(TRAIN[:2]), 1) == TRAIN[:2]
    with pytest.raises(TypeError, match="`x` must be a sequence of Example"):
        engine.check_examples("x", "text", 0)
    with pytest.raises(ValueError, match="`x` has 1 examples; at least 2"):
        engine.check_examples("x", TRAIN[:1], 1)


def test_public_steps_compose_to_predict(tiny_llama, tiny_tokenizer, tiny_sae):
    extractor = engine.Extractor(tiny_llama, tiny_sae, tiny_tokenizer, 1, CFG)
    task = steps.task_statistics(extractor, TRAIN)
    assert set(task.counts) == {"n_tokens", "n_dropped", "n_examples"}
    domains = {n: steps.domain_statistics(extractor, n, ex) for n, ex in DOMAINS.items()}
    assert all(d.shift is not None and d.n_selected >= 40 for d in domains.values())
    max_norm = float(extractor.max_norm)
    ours = steps.assemble_prediction(task, domains, layer=1, k=8, max_norm=max_norm, config=CFG)
    reference = steps.predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, CFG)
    got, want = ours.to_dict(), reference.to_dict()
    assert got.pop("timings") == {} and want.pop("timings")
    assert got == want  # every score, count and threshold, to the bit
    assert all(torch.equal(v, reference.tensors()[k]) for k, v in ours.tensors().items())
    assert math.isfinite(got["quality"]["fvu"])


def test_a_domain_without_rows_is_an_error(tiny_llama, tiny_tokenizer, tiny_sae):
    extractor = engine.Extractor(tiny_llama, tiny_sae, tiny_tokenizer, 1, CFG)
    nan = [torch.full((3, 32), float("nan"))] * 9
    _fixed_rows(extractor, {"base": nan, "icl": nan})
    with pytest.raises(ValueError, match="domain 'law' has no token rows left"):
        steps.domain_statistics(extractor, "law", DOMAINS["law"])

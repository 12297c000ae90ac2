"""The experiment's forecasts equal `predict` (paper modes) and independent dense computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sts_lightning import functional as F
from sts_lightning.data.prompts import Example
from sts_lightning.experiment.forecast import (
    Forecaster,
    contrast_shift,
    score_domains,
    to_prediction,
)
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.predict import predict

TRAIN = [
    Example(f"What is {a} + {b}?", f"The answer is {a + b}.") for a in range(4) for b in range(3)
]
UNRELATED = [Example(f"Spell {w} backwards.", w[::-1]) for w in ("cat", "dog", "sun", "tree")]
DOMAINS = {
    "law": [Example(f"The court held contract {i} void.", "Void.") for i in range(4)],
    "code": [Example(f"def f{i}(x):", f"    return x * {i}") for i in range(4)],
    "bio": [Example(f"Plants convert light {i}.", "Energy.") for i in range(4)],
}
CFG = PredictConfig(
    layer=1,
    k=8,
    n_demos=1,
    domain_demos=1,
    train_tokens=60,
    domain_tokens=40,
    max_norm=1e4,
    progress=False,
    seed=3,
)


@pytest.fixture(scope="module")
def forecast(tiny_llama, tiny_tokenizer, tiny_sae):
    f = Forecaster(tiny_llama, tiny_tokenizer, tiny_sae, 1, CFG)
    domains = f.domains(DOMAINS, seed=CFG.seed)
    task = f.task(TRAIN, seed=CFG.seed, contrast_pool=UNRELATED)
    return f, domains, task


def test_paper_modes_equal_predict(forecast, tiny_llama, tiny_tokenizer, tiny_sae):
    _, domains, task = forecast
    scores = score_domains(domains, task, k=CFG.k, raw_k=5)
    reference = predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, CFG)
    for name, score in reference.domains.items():
        for mode in ("act", "icl", "notebook", "signed"):
            assert scores[name][mode] == pytest.approx(getattr(score, mode), rel=1e-5), mode
    pred = to_prediction(domains, task, layer=1, k=CFG.k, max_norm=1e4, config=CFG)
    assert torch.equal(pred.top_latents, reference.top_latents)
    assert torch.allclose(pred.domain_means["law"], reference.domain_means["law"], atol=1e-6)
    got, want = pred.to_dict(), reference.to_dict()
    got.pop("timings"), want.pop("timings")
    assert got == want  # one assembly: with the same threshold, predict's forecast to the bit


def test_raw_and_similarity_baselines_match_numpy(forecast):
    _, domains, task = forecast
    scores = score_domains(domains, task, k=CFG.k, raw_k=5)
    raw_delta = task.stats.raw_shift.feature_shift().numpy()
    raw_top = np.argsort(-raw_delta, kind="stable")[:5]
    task_sae = task.stats.moments.compute()["mean"].numpy()
    task_raw = task.stats.raw_moments.compute()["mean"].numpy()
    for name, d in domains.items():
        mean_raw = d.raw_moments.compute()["mean"].numpy()
        assert scores[name]["raw_act"] == pytest.approx(mean_raw[raw_top].sum(), rel=1e-6)
        icl_raw = d.raw_shift.feature_shift().numpy()
        assert scores[name]["raw_icl"] == pytest.approx(icl_raw[raw_top].sum(), rel=1e-6)
        mean_sae = d.moments.compute()["mean"].numpy()
        cos = task_sae @ mean_sae / np.linalg.norm(task_sae) / np.linalg.norm(mean_sae)
        assert scores[name]["repsim_sae"] == pytest.approx(cos, rel=1e-6)
        cos = task_raw @ mean_raw / np.linalg.norm(task_raw) / np.linalg.norm(mean_raw)
        assert scores[name]["repsim_resid"] == pytest.approx(cos, rel=1e-6)


def test_contrast_is_the_difference_of_two_shifts_on_the_same_queries(forecast):
    f, domains, task = forecast
    # Same queries → same number of paired rows (up to massive-activation drops, none here).
    assert int(task.contrast.n_tokens) == int(task.stats.shift.n_tokens)
    diff = contrast_shift(task)
    expected = task.stats.shift.feature_shift() - task.contrast.feature_shift()
    assert torch.allclose(diff, expected.float())
    top_c = F.top_shifted(diff, k=CFG.k)
    scores = score_domains(domains, task, k=CFG.k, raw_k=5)
    for name, d in domains.items():
        mean = d.moments.compute()["mean"]
        assert scores[name]["act_contrast"] == pytest.approx(float(mean[top_c].sum()), rel=1e-6)
    # With the task's own examples as the "unrelated" pool the two shifts coincide.
    same = f.task(TRAIN, seed=CFG.seed, contrast_pool=TRAIN)
    assert torch.allclose(contrast_shift(same), torch.zeros_like(diff), atol=1e-5)


def test_without_domain_demos_icl_modes_are_nan(tiny_llama, tiny_tokenizer, tiny_sae):
    cfg = PredictConfig(**{**CFG.__dict__, "domain_demos": 0})
    f = Forecaster(tiny_llama, tiny_tokenizer, tiny_sae, 1, cfg)
    scores = score_domains(f.domains(DOMAINS, seed=0), f.task(TRAIN, seed=0), k=4, raw_k=4)
    assert all(np.isnan(s["icl"]) and np.isnan(s["raw_icl"]) for s in scores.values())
    assert "act_contrast" not in scores["law"]  # no contrast pool, no contrast modes


def test_too_few_examples_is_a_clear_error(tiny_llama, tiny_tokenizer, tiny_sae):
    f = Forecaster(tiny_llama, tiny_tokenizer, tiny_sae, 1, CFG)
    with pytest.raises(ValueError, match=r"`contrast_pool` has 1 examples"):
        f.task(TRAIN, seed=0, contrast_pool=UNRELATED[:1])


def test_domain_halves_merge_to_one_pass_over_both(tiny_llama, tiny_tokenizer, tiny_sae):
    """Each half reads its own examples (even / odd positions) with half the budget; the full
    statistics are exactly the two halves' sums, and scores on them follow."""
    f = Forecaster(tiny_llama, tiny_tokenizer, tiny_sae, 1, CFG)
    full, a, b = f.domain_halves(DOMAINS, seed=CFG.seed)
    for name in DOMAINS:
        for field in ("moments", "raw_moments"):
            merged = getattr(full[name], field).compute()
            halves = [getattr(h[name], field) for h in (a, b)]
            n = [float(h.n_tokens) for h in halves]
            assert float(getattr(full[name], field).n_tokens) == sum(n) > 0
            # The merged mean is the token-weighted mean of the two halves' means.
            want = (n[0] * halves[0].compute()["mean"] + n[1] * halves[1].compute()["mean"]) / sum(
                n
            )
            assert torch.allclose(merged["mean"], want, atol=1e-10)
        counts = [h[name].counts["n_examples"] for h in (a, b)]
        assert full[name].counts["n_examples"] == sum(counts)
    task = f.task(TRAIN, seed=CFG.seed)
    assert score_domains(a, task, k=CFG.k, raw_k=5).keys() == DOMAINS.keys()
    # Too few examples to halve (each half needs domain_demos + 1): no halves.
    small = {n: ex[:3] for n, ex in DOMAINS.items()}
    full, a, b = f.domain_halves(small, seed=CFG.seed)
    assert a is None and b is None and full.keys() == small.keys()

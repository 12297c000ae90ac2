"""Comparing training sets: predict_many equals N single predict runs; bad sets are named."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch

from sts_lightning.data.prompts import Example
from sts_lightning.forecast.compare import predict_many
from sts_lightning.forecast.comparison import Comparison
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.predict import predict

ADD = [
    Example(f"What is {a} + {b}?", f"The answer is {a + b}.")
    for a, b in zip(range(9), range(3, 12), strict=True)
]
LAW = [
    Example(t, "It is void.")
    for t in [
        "The court held the contract void.",
        "A contract needs consideration.",
        "The judge dismissed the claim.",
        "The appeal was granted.",
        "The statute was repealed.",
    ]
]
CODE = [Example(f"def f{i}(x):", f"    return x * {i}") for i in range(6)]
SCIENCE = [
    Example("Photosynthesis converts light energy."),
    Example("Plants store chemical energy."),
    Example("Light is energy."),
]
DOMAINS = {"science": SCIENCE, "code": CODE}
SETS = {"add": ADD, "law": LAW}
SMALL = {"k": 10, "n_demos": 2, "domain_demos": 1, "train_tokens": 120, "domain_tokens": 60}
CFG = PredictConfig(**SMALL, batch_size=3, max_norm=1e9, progress=False)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short domains, on purpose
        return fn(*args, **kwargs)


def assert_same(a, b):
    """Exact equality of everything a forecast computes (timings and meta aside)."""
    assert torch.equal(a.shift, b.shift)
    assert torch.equal(a.signed_shift, b.signed_shift)
    assert torch.equal(a.top_latents, b.top_latents)
    assert a.domains == b.domains  # every DomainScore field, with ==
    assert a.train == b.train and a.quality == b.quality and a.max_norm == b.max_norm
    assert all(torch.equal(a.domain_means[d], b.domain_means[d]) for d in a.domains)


@pytest.fixture(scope="module")
def comparison(tiny_llama, tiny_tokenizer, tiny_sae):
    return _quiet(predict_many, tiny_llama, tiny_tokenizer, tiny_sae, SETS, DOMAINS, CFG)


def test_predict_many_equals_single_runs(comparison, tiny_llama, tiny_tokenizer, tiny_sae):
    assert comparison.names == ["add", "law"] and comparison.domains == ["science", "code"]
    for name, examples in SETS.items():
        single = _quiet(predict, tiny_llama, tiny_tokenizer, tiny_sae, examples, DOMAINS, CFG)
        assert_same(comparison.predictions[name], single)


def test_without_max_norm_the_first_set_fixes_the_threshold(tiny_llama, tiny_tokenizer, tiny_sae):
    cfg = replace(CFG, max_norm=None, outlier_factor=1.5)  # low enough to drop some rows
    args = (tiny_llama, tiny_tokenizer, tiny_sae)
    many = _quiet(predict_many, *args, {"law": LAW, "add": ADD}, DOMAINS, cfg)
    first = _quiet(predict, *args, LAW, DOMAINS, cfg)
    assert many.max_norm == first.max_norm
    assert_same(many.predictions["law"], first)
    # Every later set equals a single run with the comparison's threshold.
    fixed = replace(cfg, max_norm=many.max_norm)
    second = _quiet(predict, *args, ADD, DOMAINS, fixed)
    assert_same(many.predictions["add"], replace(second, config=many.predictions["add"].config))
    # ... which is not the threshold a single run would fix from its own first batch.
    assert _quiet(predict, *args, ADD, DOMAINS, cfg).max_norm != many.max_norm


def test_item_sums_add_up_to_the_shift(comparison):
    for name, pred in comparison.predictions.items():
        items = comparison.items[name]
        assert items.n_rows.sum() == pred.train["n_tokens"]
        n = items.n_rows.sum()
        torch.testing.assert_close(
            (items.sum_sq.sum(0) / n).float(), pred.shift[items.candidates], rtol=1e-5, atol=1e-7
        )
        torch.testing.assert_close(
            (items.sum.sum(0) / n).float(),
            pred.signed_shift[items.candidates],
            rtol=1e-5,
            atol=1e-7,
        )
        assert torch.equal(items.candidates[: len(pred.top_latents)], pred.top_latents)


def test_comparison_round_trips(comparison, tmp_path):
    comparison.save(tmp_path / "cmp")
    back = Comparison.load(tmp_path / "cmp")
    assert back.names == comparison.names and back.max_norm == comparison.max_norm
    for name in comparison.names:
        assert_same(back.predictions[name], comparison.predictions[name])
        for f in ("candidates", "sum_sq", "sum", "n_rows"):
            assert torch.equal(getattr(back.items[name], f), getattr(comparison.items[name], f))
    for d, vectors in comparison.domain_vectors.items():
        assert vectors.keys() == back.domain_vectors[d].keys()
        assert all(torch.equal(v, back.domain_vectors[d][m]) for m, v in vectors.items())
    assert not list((tmp_path / "cmp").glob(".comparison*"))  # no temporary left


def test_load_of_a_bad_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="readable comparison"):
        Comparison.load(tmp_path)


@pytest.mark.parametrize(
    "sets, error, message",
    [
        ([("a", ADD), ("a", LAW)], ValueError, "names the set 'a' twice"),
        ({"a": ADD, "b": []}, ValueError, r"train_sets\['b'\]` is empty"),
        ({"a": ADD, "b": ADD[:2]}, ValueError, r"train_sets\['b'\]` has 2 examples"),
        ({"a": ADD, "b": "data.jsonl"}, TypeError, r"train_sets\['b'\]` must be a sequence"),
        ({"a": ADD, "b": [ADD[0], "x", ADD[1]]}, TypeError, r"train_sets\['b'\]` must contain"),
        ({}, ValueError, "non-empty mapping"),
        ({"": ADD}, ValueError, "non-empty strings"),
    ],
)
def test_bad_sets_are_named(sets, error, message, tiny_llama, tiny_tokenizer, tiny_sae):
    with pytest.raises(error, match=message):
        predict_many(tiny_llama, tiny_tokenizer, tiny_sae, sets, DOMAINS, CFG)


def test_n_candidates_below_k_is_an_error(tiny_llama, tiny_tokenizer, tiny_sae):
    with pytest.raises(ValueError, match=r"`n_candidates` must be an int >= `config.k`=10"):
        predict_many(tiny_llama, tiny_tokenizer, tiny_sae, SETS, DOMAINS, CFG, n_candidates=5)


@pytest.mark.slow
def test_embedded_default_two_sets_equal_single_runs():
    """SmolLM2 + the cached SAE of the compare recipe, two built-in sets, small budgets."""
    from sts_lightning.data.domains import load_training_set
    from sts_lightning.forecast.job import load_inputs, load_job

    job = load_job(
        "recipes/predict_compare_smollm2.yaml", "--domains", "[math, law]", "--protected", "[law]"
    )
    cfg = replace(job.predict, train_tokens=200, domain_tokens=100, progress=False)
    model, tokenizer, sae, domains, _ = load_inputs(job)
    sets = {n: load_training_set(n, 64, seed=cfg.seed) for n in ("arithmetic", "family")}
    many = _quiet(predict_many, model, tokenizer, sae, sets, domains, cfg)
    assert many.max_norm == 500.0 and many.domains == ["math", "law"]
    for name, examples in sets.items():
        assert_same(
            many.predictions[name], _quiet(predict, model, tokenizer, sae, examples, domains, cfg)
        )
    assert not torch.equal(many.predictions["arithmetic"].shift, many.predictions["family"].shift)

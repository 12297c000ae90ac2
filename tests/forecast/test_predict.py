"""The predictor equals the functional core on dense features extracted the slow way."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from sts_lightning import functional as F
from sts_lightning.data.prompts import Example, build_pairs
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.predict import predict
from sts_lightning.forecast.prediction import Prediction

TRAIN = [
    Example(f"What is {a} + {b}?", f"The answer is {a + b}.")
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (2, 9)]
]
DOMAINS = {
    "law": [
        Example(t, "It is void.")
        for t in [
            "The court held the contract void.",
            "A contract needs consideration.",
            "The judge dismissed the claim.",
        ]
    ],
    "code": [
        Example("def add(a, b):", "    return a + b"),
        Example("def sub(a, b):", "  return"),
        Example("def mul(x, y):", "    return x * y"),
    ],
    "science": [
        Example("Photosynthesis converts light energy."),
        Example("Plants store chemical energy."),
        Example("Light is energy."),
    ],
}


def _dense(model, tokenizer, sae, examples, n_demos, span, seed):
    """Slow path: full forward with output_hidden_states, every row kept, encode at once."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    pairs = build_pairs(
        tokenizer, [examples[i] for i in order], n_demos, seed=seed, demo_pool=examples
    )
    special = set(tokenizer.all_special_ids)
    rows = {"base": [], "icl": []}
    for base, icl in pairs:
        for name, enc in (("base", base), ("icl", icl)):
            ids = torch.tensor([enc.input_ids])
            with torch.no_grad():
                hidden = model(ids, output_hidden_states=True).hidden_states[2][0]  # layer 1
            s, e = enc.span(span)
            keep = [p for p in range(s, e) if enc.input_ids[p] not in special]
            rows[name].append(hidden[keep])
    return (sae.encode(torch.cat(rows["base"])).float(), sae.encode(torch.cat(rows["icl"])).float())


@pytest.mark.parametrize("span", ["all", "answer"])
def test_predict_equals_functional_on_dense_rows(tiny_llama, tiny_tokenizer, tiny_sae, span):
    cfg = PredictConfig(
        k=10,
        n_demos=2,
        domain_demos=1,
        train_tokens=10**6,
        domain_tokens=10**6,
        train_span=span,
        domain_span="all",
        max_norm=1e9,
        batch_size=3,
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every domain is below the (huge) budget, on purpose
        pred = predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, cfg)

    base, icl = _dense(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, 2, span, cfg.seed)
    delta = F.feature_shift(base, icl)
    torch.testing.assert_close(pred.shift, delta, rtol=1e-4, atol=1e-6)
    top = F.top_shifted(delta, 10)
    assert F.overlap_at_k(pred.top_latents, top) == 10
    assert pred.train["n_tokens"] == base.shape[0] and pred.train["n_dropped"] == 0
    signed = F.signed_shift(base, icl)
    for name, examples in DOMAINS.items():
        d_base, d_icl = _dense(tiny_llama, tiny_tokenizer, tiny_sae, examples, 1, "all", cfg.seed)
        got = pred.domains[name]
        assert got.n_tokens == d_base.shape[0]
        torch.testing.assert_close(got.act, F.sts_act(d_base, top).item(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            got.notebook, F.sts_notebook(d_base, top).item(), rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(
            got.icl, F.sts_icl(d_base, d_icl, top).item(), rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(
            got.signed, F.sts_signed(d_base, signed, top).item(), rtol=1e-4, atol=1e-6
        )


def test_zero_demonstrations_give_zero_shift(tiny_llama, tiny_tokenizer, tiny_sae):
    cfg = PredictConfig(
        k=5, n_demos=0, domain_demos=0, train_tokens=50, domain_tokens=20, progress=False
    )
    pred = predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, cfg)
    assert torch.equal(pred.shift, torch.zeros(64))
    assert all(s.icl is None for s in pred.domains.values())


def test_budgets_outliers_and_round_trip(tiny_llama, tiny_tokenizer, tiny_sae, tmp_path):
    cfg = PredictConfig(
        k=8, domain_demos=1, train_tokens=30, domain_tokens=10, outlier_factor=1.01, progress=False
    )
    pred = predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, cfg, meta={"m": "tiny"})
    # Stops at the first example that reaches the budget, and says how much it used.
    assert 30 <= pred.train["n_tokens"] + pred.train["n_dropped"] < 30 + 25
    assert pred.train["n_dropped"] > 0  # 1.01 × median norm drops about half
    assert all(s.n_tokens + s.n_dropped >= 10 for s in pred.domains.values())
    pred.save(tmp_path / "p")
    again = Prediction.load(tmp_path / "p")
    assert again.to_dict() == pred.to_dict()
    assert torch.equal(again.shift, pred.shift)
    assert torch.equal(again.domain_means["law"], pred.domain_means["law"])
    assert "law" in pred.table() and "STS_ICL" in pred.table()
    assert pred.save_chart(tmp_path / "chart.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="mode"):
        pred.scores("nope")


def test_short_domain_warns_with_token_count(tiny_llama, tiny_tokenizer, tiny_sae):
    cfg = PredictConfig(k=4, domain_demos=0, train_tokens=20, domain_tokens=10**5, progress=False)
    with pytest.warns(UserWarning, match=r"domain 'law' has \d+ tokens, fewer than"):
        predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, {"law": DOMAINS["law"]}, cfg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cfg": PredictConfig(layer=7, domain_demos=0, progress=False)}, "layer"),
        ({"cfg": PredictConfig(k=65, domain_demos=0, progress=False)}, "d_sae=64"),
        ({"domains": {}}, "non-empty mapping"),
        ({"domains": {"law": DOMAINS["law"][:1]}}, r"domains\['law'\]"),
        ({"train": TRAIN[:2]}, "train_examples"),
    ],
)
def test_bad_inputs(tiny_llama, tiny_tokenizer, tiny_sae, kwargs, match):
    cfg = kwargs.get("cfg", PredictConfig(train_tokens=10, domain_tokens=10, progress=False))
    with pytest.raises(ValueError, match=match):
        predict(
            tiny_llama,
            tiny_tokenizer,
            tiny_sae,
            kwargs.get("train", TRAIN),
            kwargs.get("domains", DOMAINS),
            cfg,
        )


def test_config_checks():
    for kwargs, match in [
        ({"k": 0}, "`k`"),
        ({"train_tokens": -1}, "train_tokens"),
        ({"domain_span": "x"}, "domain_span"),
        ({"n_demos": -1}, "n_demos"),
        ({"max_norm": 0}, "max_norm"),
    ]:
        with pytest.raises(ValueError, match=match):
            PredictConfig(**kwargs)


def test_missing_pad_token_falls_back_to_eos_with_warning(tiny_llama, tiny_tokenizer, tiny_sae):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    cfg = PredictConfig(k=4, domain_demos=0, train_tokens=20, domain_tokens=10, progress=False)
    with pytest.warns(UserWarning, match="no pad token; padding with the eos token"):
        pred = predict(tiny_llama, tok, tiny_sae, TRAIN, DOMAINS, cfg)
    reference = predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, cfg)
    torch.testing.assert_close(pred.shift, reference.shift)  # padding is masked either way

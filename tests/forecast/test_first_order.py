"""The first-order control against a finite-difference step on a tiny random Llama."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sts_lightning.data.prompts import Example, encode_example
from sts_lightning.forecast.first_order import (
    MeanGradient,
    RandomProjection,
    first_order_forecast,
    first_order_scores,
    mean_answer_gradient,
    select_parameters,
)
from sts_lightning.functional import first_order_change

TRAIN = [
    Example("What is 12 + 7?", "The answer is 19."),
    Example("Solve 3 * 4 - 5.", "The answer is 7."),
    Example("What is 2 + 2?", "The answer is 4."),
    Example("Solve 9 - 3.", "The answer is 6."),
]
LAW = [
    Example("Was the contract valid?", "The court held that the contract was void."),
    Example("What did the court hold?", "It held the contract void for lack of consideration."),
    Example("Name a legal doctrine.", "Consideration."),
]


def answer_loss(model, tokenizer, examples) -> float:
    """Mean answer NLL per token, one item at a time (an oracle independent of the batching)."""
    total, tokens = 0.0, 0
    for ex in examples:
        enc = encode_example(tokenizer, ex)
        start, end = enc.span("answer")
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            logp = model(ids).logits[0, start - 1 : end - 1].log_softmax(-1)
        total -= float(logp.gather(-1, ids[0, start:end, None]).sum())
        tokens += end - start
    return total / tokens


@pytest.fixture(scope="module")
def llama64(tiny_llama):
    return copy.deepcopy(tiny_llama).double().eval()


def sgd_step_change(model, tokenizer, params, lr: float, domain) -> float:
    """Measured change of the domain's loss after one SGD step on the training loss."""
    stepped = copy.deepcopy(model)
    names = {n for n, _ in params}
    chosen = [p for n, p in stepped.named_parameters() if n in names]
    for p in stepped.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    optimiser = torch.optim.SGD(chosen, lr=lr)
    total, tokens = 0.0, 0
    for ex in TRAIN:  # the token-mean training loss, summed item by item
        enc = encode_example(tokenizer, ex)
        start, end = enc.span("answer")
        ids = torch.tensor([enc.input_ids])
        logp = stepped(ids).logits[0, start - 1 : end - 1].log_softmax(-1)
        total = total - logp.gather(-1, ids[0, start:end, None]).sum()
        tokens += end - start
    (total / tokens).backward()
    optimiser.step()
    return answer_loss(stepped, tokenizer, domain) - answer_loss(model, tokenizer, domain)


@pytest.mark.parametrize("which", ["last_layer", ["model.layers.1.mlp", "lm_head"]])
def test_first_order_matches_a_small_sgd_step(llama64, tiny_tokenizer, which, one_thread):
    params = select_parameters(llama64, which)
    g_train = mean_answer_gradient(llama64, tiny_tokenizer, TRAIN, params, batch_size=3)
    errors = {}
    for name, domain in (("train", TRAIN), ("law", LAW)):
        g = mean_answer_gradient(llama64, tiny_tokenizer, domain, params, batch_size=2)
        for lr in (1e-2, 5e-3):
            predicted = float(first_order_change(g.full, g_train.full, lr))
            measured = sgd_step_change(llama64, tiny_tokenizer, params, lr, domain)
            errors[name, lr] = abs(measured - predicted)
            # First order: the error is second order in lr, far below the change itself.
            assert errors[name, lr] <= 0.02 * abs(predicted) + 1e-9
    for name in ("train", "law"):  # halving the step divides the second-order error by ~4
        assert errors[name, 5e-3] < 0.35 * errors[name, 1e-2]


def test_projection_preserves_inner_products_within_jl(llama64, tiny_tokenizer, one_thread):
    params = select_parameters(llama64, "last_layer")
    size = sum(p.numel() for _, p in params)
    assert all(".layers.2." in n for n, _ in params) and size > 5000
    raw_t = mean_answer_gradient(llama64, tiny_tokenizer, TRAIN, params)
    raw_d = mean_answer_gradient(llama64, tiny_tokenizer, LAW, params)
    exact = float(raw_d.full @ raw_t.full)
    bound = 4 * math.sqrt(2 / 2048) * float(raw_d.full.norm() * raw_t.full.norm())
    for kind in ("rademacher", "gaussian", "sketch"):
        proj = RandomProjection(2048, seed=1, kind=kind)
        g_t = mean_answer_gradient(llama64, tiny_tokenizer, TRAIN, params, projection=proj)
        g_d = mean_answer_gradient(llama64, tiny_tokenizer, LAW, params, projection=proj)
        assert g_t.full.shape == (2048,)
        assert float(g_d.full @ g_t.full) == pytest.approx(exact, abs=bound)
        assert float(g_t.full.norm()) == pytest.approx(float(raw_t.full.norm()), rel=0.15)


def test_projection_is_seeded_and_linear():
    x, y = torch.randn(10_000, dtype=torch.float64), torch.randn(10_000)
    for kind in ("rademacher", "sketch"):
        proj = RandomProjection(64, seed=3, kind=kind)
        torch.testing.assert_close(proj(x), RandomProjection(64, seed=3, kind=kind)(x))
        assert not torch.allclose(proj(x), RandomProjection(64, seed=4, kind=kind)(x))
        torch.testing.assert_close(proj(2 * x + y), 2 * proj(x) + proj(y), atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="`dim`"):
        RandomProjection(0)


def test_halves_merge_to_the_whole(llama64, tiny_tokenizer, one_thread):
    params = select_parameters(llama64, "last_layer")
    whole = mean_answer_gradient(llama64, tiny_tokenizer, TRAIN + LAW, params)
    split = mean_answer_gradient(llama64, tiny_tokenizer, TRAIN + LAW, params, halves=True)
    (ga, gb), (na, nb) = split.halves, split.half_tokens
    assert na + nb == whole.tokens == split.tokens
    torch.testing.assert_close(split.full, whole.full)
    torch.testing.assert_close((na * ga + nb * gb) / (na + nb), whole.full)
    assert all(p.grad is None and p.requires_grad for p in llama64.parameters())


def test_forecast_scores_and_halves():
    train = MeanGradient(torch.tensor([1.0, 0.0]), 4)
    domains = {
        "a": MeanGradient(
            torch.tensor([2.0, 1.0]), 3, (torch.tensor([1.0, 0]), torch.tensor([3.0, 0])), (1, 2)
        ),
        "b": MeanGradient(
            torch.tensor([-1.0, 5.0]), 3, (torch.tensor([0.0, 1]), torch.tensor([-2.0, 9])), (1, 2)
        ),
    }
    out = first_order_forecast(train, domains, lr=0.5)
    assert out["scores"] == {"a": -1.0, "b": 0.5}
    assert out["halves"] == {"a": {"a": -0.5, "b": -0.0}, "b": {"a": -1.5, "b": 1.0}}


def test_first_order_scores_end_to_end(llama64, tiny_tokenizer, one_thread):
    out = first_order_scores(
        llama64, tiny_tokenizer, TRAIN, {"math": TRAIN, "law": LAW}, lr=0.1, dim=None
    )
    params = select_parameters(llama64, "last_layer")
    g_t = mean_answer_gradient(llama64, tiny_tokenizer, TRAIN, params).full
    g_law = mean_answer_gradient(llama64, tiny_tokenizer, LAW, params).full
    assert out["scores"]["law"] == pytest.approx(-0.1 * float(g_law @ g_t))
    assert out["scores"]["math"] == pytest.approx(-0.1 * float(g_t @ g_t))
    assert set(out["halves"]) == {"a", "b"} and out["dim"] is None
    sketched = first_order_scores(llama64, tiny_tokenizer, TRAIN, {"law": LAW}, lr=0.1, dim=64)
    assert sketched["dim"] == 64 and sketched["n_parameters"] == out["n_parameters"]


def test_select_parameters_refuses_by_name(tiny_llama):
    with pytest.raises(ValueError, match="`which`='lora' selects no parameter"):
        select_parameters(tiny_llama, "lora")
    with pytest.raises(ValueError, match="`which`"):
        select_parameters(tiny_llama, "everything")

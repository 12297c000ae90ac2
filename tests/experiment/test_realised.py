"""Held-out losses per item and layer-L rows equal an HF full forward; paired comparisons of
answer-level scores."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as TF

from sts_lightning.data.choice_format import encode_choices
from sts_lightning.data.choices import ChoiceItem
from sts_lightning.data.prompts import Example
from sts_lightning.experiment.realised import compare, exact_match, item_losses, score_choices
from sts_lightning.monitor.evaluation import encode_eval_set

ITEMS = {
    "law": [Example(f"The court held contract {i} void.", "Void.") for i in range(5)],
    "code": [Example(f"def f{i}(x):", f"    return x * {i}") for i in range(3)],
}


def _encoded(tokenizer, span="all"):
    return {n: encode_eval_set(tokenizer, ex, 10_000, span=span) for n, ex in ITEMS.items()}


@pytest.mark.parametrize("span", ["all", "answer"])
def test_item_losses_equal_a_full_forward(tiny_llama, tiny_tokenizer, span):
    encoded = _encoded(tiny_tokenizer, span)
    special = set(tiny_tokenizer.all_special_ids)
    got = item_losses(
        tiny_llama, encoded, layer=1, pad_token_id=0, exclude_token_ids=special, batch_size=2
    )
    for name, items in encoded.items():
        nll, counts, rows = [], [], []
        for e in items:
            ids = torch.tensor([e.input_ids])
            with torch.no_grad():
                out = tiny_llama(ids, output_hidden_states=True)
            start, end = e.span(span)
            start = max(start, 1)
            logp = TF.log_softmax(out.logits[0].double(), -1)
            nll.append(-sum(logp[t - 1, e.input_ids[t]] for t in range(start, end)))
            counts.append(end - start)
            keep = [t for t in range(start, end) if e.input_ids[t] not in special]
            rows.append(out.hidden_states[2][0, keep])  # after decoder layer 1
        assert torch.allclose(got[name].nll, torch.stack(nll), rtol=1e-4)
        assert got[name].counts.tolist() == counts
        assert torch.allclose(got[name].rows, torch.cat(rows), atol=1e-4)


CHOICES = {
    "law": [
        ChoiceItem(
            f"The court held contract {i} void for lack of what?", ("ink", "law", "fee"), i % 3
        )
        for i in range(5)
    ],
    "code": [
        ChoiceItem(f"def f{i}(x):\n", (f"    return x * {i}\n", f"    return x + {i}\n"), 0, False)
        for i in range(3)
    ],
}


def _choices(tokenizer, text_format="plain"):
    return {
        n: encode_choices(tokenizer, its, text_format=text_format) for n, its in CHOICES.items()
    }


def test_compare_same_model_is_zero_and_a_change_is_seen(tiny_llama, tiny_tokenizer, tiny_sae):
    encoded = _choices(tiny_tokenizer)
    kw = dict(layer=1, pad_token_id=0, exclude_token_ids=tiny_tokenizer.all_special_ids)
    base = score_choices(tiny_llama, encoded, **kw)
    same = compare(base, score_choices(tiny_llama, encoded, **kw), tiny_sae, max_norm=1e4)
    for row in same.values():
        for key in ("delta", "answer_nll_delta", "item_nll_delta"):
            assert row[key] == pytest.approx(0.0, abs=1e-9)
        assert row["post_shift_sae"] == pytest.approx(0.0, abs=1e-8)
        assert row["post_shift_resid"] == pytest.approx(0.0, abs=1e-10)
    moved = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        for p in moved.model.layers[0].parameters():
            p.add_(0.05 * torch.randn_like(p))
    now = score_choices(moved, encoded, **kw)
    for metric in ("choice_margin", "answer_nll", "item_nll"):
        out = compare(base, now, tiny_sae, max_norm=1e4, metric=metric)
        for name, row in out.items():
            b, a = base[name], now[name]
            want = {  # the metric's definition, from the two passes' scores
                "choice_margin": float((b.margin - a.margin).mean()),
                "answer_nll": float((a.answer_nll - b.answer_nll).sum() / b.answer_tokens.sum()),
                "item_nll": float((a.item_nll - b.item_nll).sum() / b.item_tokens.sum()),
            }[metric]
            assert row["metric"] == metric and row["delta"] == pytest.approx(want, rel=1e-9)
            items = row["items"]
            again = sum(y - x for x, y in zip(items["base"], items["tuned"], strict=True))
            assert again / sum(items["weight"]) == pytest.approx(want, rel=1e-9)
            assert row["loss"] - row["base_loss"] == pytest.approx(row["item_nll_delta"], rel=1e-6)
            assert row["accuracy"] == pytest.approx(float(a.accurate.double().mean()))
            assert row["n_items"] == len(CHOICES[name]) and row["n_tokens"] == int(
                b.item_tokens.sum()
            )
            assert row["se"] > 0 and row["post_shift_sae"] > 0 and row["post_shift_resid"] > 0
            diff = (a.rows - b.rows).double().square().sum(-1).mean()
            norm = b.rows.double().square().sum(-1).mean()
            assert row["post_shift_resid"] == pytest.approx(float(diff / norm), rel=1e-6)


def test_compare_refuses_different_items(tiny_llama, tiny_tokenizer, tiny_sae):
    kw = dict(layer=1, pad_token_id=0)
    encoded = _choices(tiny_tokenizer)
    a = score_choices(tiny_llama, encoded, **kw)
    b = score_choices(tiny_llama, {n: e[::-1] for n, e in encoded.items()}, **kw)
    with pytest.raises(ValueError, match="did not score the same items"):
        compare(a, b, tiny_sae, max_norm=1e4)


def test_exact_match_counts_what_the_scorer_accepts(tiny_llama, tiny_tokenizer):
    examples = [Example(f"What is {i} + 1?", str(i + 1)) for i in range(5)]
    seen = []

    def score(text, example):
        seen.append(text)
        return 1.0 if example.answer in ("1", "3") else 0.0

    assert exact_match(tiny_llama, tiny_tokenizer, examples, score, batch_size=2) == 0.4
    assert len(seen) == 5
    assert math.isnan(exact_match(tiny_llama, tiny_tokenizer, [], score))  # nothing to score


class _NoMaskLM(torch.nn.Module):
    """A causal LM whose `logits_to_keep` takes no mask (older transformers: IndexError)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.model = inner.model  # decoder_layers() finds the blocks here

    def forward(self, *args, logits_to_keep=0, **kwargs):
        if isinstance(logits_to_keep, torch.Tensor):
            raise IndexError("too many indices for tensor of dimension 3")
        return self.inner(*args, **kwargs)


def test_models_without_masked_logits_fall_back_to_full_logits(tiny_llama, tiny_tokenizer):
    from sts_lightning.training.sft import answer_nll

    encoded = _encoded(tiny_tokenizer)
    kw = dict(layer=1, pad_token_id=0)
    want, got = (
        item_losses(tiny_llama, encoded, **kw),
        item_losses(_NoMaskLM(tiny_llama), encoded, **kw),
    )
    for name in encoded:
        assert torch.allclose(got[name].nll, want[name].nll, rtol=1e-5)
        assert torch.equal(got[name].rows, want[name].rows)  # the failed try left no stray rows
    ids = torch.tensor([encoded["law"][0].input_ids])
    labels = ids.clone()
    labels[:, :3] = -100
    mask = torch.ones_like(ids)
    nll, n = answer_nll(_NoMaskLM(tiny_llama), ids, mask, labels)
    ref, n_ref = answer_nll(tiny_llama, ids, mask, labels)
    assert int(n) == int(n_ref) and torch.allclose(nll, ref, rtol=1e-5)

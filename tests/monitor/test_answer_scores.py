"""The answer-level realised metric: option log-probs equal a hand-computed forward, the margin
ignores a uniform shift, formats keep templates out of the content, long items keep the answer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF

from sts_lightning.data.choice_format import encode_choice, encode_choices, render_choice
from sts_lightning.data.choices import ChoiceItem, mutate_code, pair_choices
from sts_lightning.data.prompts import Example
from sts_lightning.monitor.answer_scores import choice_margin, score_choices

LISTED = [
    ChoiceItem("What is 12 + 7?", ("17", "19", "21", "12"), 1),
    ChoiceItem("The court held the contract void for lack of what?", ("ink", "consideration"), 1),
    ChoiceItem(
        "Which converts light energy into chemical energy?", ("rain", "sand", "photosynthesis"), 2
    ),
]
CODE = [
    ChoiceItem("def add(a, b):\n", ("    return a + b\n", "    return a - b\n"), 0, listed=False),
    ChoiceItem(
        "def same(a, b):\n", ("    return a == b\n", "    return a != b\n"), 0, listed=False
    ),
]


def _logp_by_hand(model, ids: list[int], start: int, end: int) -> tuple[float, float]:
    """Σ log p of tokens ``[start, end)`` and of every token from 1, with a plain forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = TF.log_softmax(logits, -1)
    picked = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))]  # picked[t-1] is token t
    return sum(picked[start - 1 : end - 1]), sum(picked)


@pytest.mark.parametrize("text_format", ["plain", "chat"])
def test_option_logp_equals_a_hand_computed_forward(tiny_llama, tiny_tokenizer, text_format):
    items = {"listed": LISTED, "code": CODE}
    encoded = {
        n: encode_choices(tiny_tokenizer, its, text_format=text_format) for n, its in items.items()
    }
    got = score_choices(tiny_llama, encoded, pad_token_id=0, batch_size=2)
    for name, enc in encoded.items():
        scores = got[name]
        for i, e in enumerate(enc):
            for k, seq in enumerate(e.sequences):
                want, _ = _logp_by_hand(tiny_llama, seq, *e.answer_spans[k])
                assert float(scores.option_logp[i, k]) == pytest.approx(want, rel=1e-5, abs=1e-6)
            # The item NLL: every content token of the correct option's sequence.
            seq = e.sequences[e.correct]
            with torch.no_grad():
                logp = TF.log_softmax(tiny_llama(torch.tensor([seq])).logits[0].double(), -1)
            content = sorted({t for a, b in e.content_spans for t in range(max(a, 1), b)})
            nll = -sum(float(logp[t - 1, seq[t]]) for t in content)
            assert float(scores.item_nll[i]) == pytest.approx(nll, rel=1e-5)
            assert int(scores.item_tokens[i]) == len(content)
            k = int(scores.option_logp[i, : len(e.sequences)].argmax())
            assert bool(scores.accurate[i]) == (k == e.correct)
        assert torch.equal(scores.answer_nll, -scores.option_logp[range(len(enc)), scores.correct])


def test_answers_only_pass_scores_the_same_answers_without_the_item_nll(tiny_llama, tiny_tokenizer):
    """``item_nll=False`` computes logits at the answers only: the option log-probs, token
    counts and rows are those of the full pass; the item NLL is NaN."""
    encoded = {
        "listed": encode_choices(tiny_tokenizer, LISTED, text_format="chat"),
        "code": encode_choices(tiny_tokenizer, CODE, text_format="chat"),
    }
    full = score_choices(tiny_llama, encoded, pad_token_id=0, batch_size=2, layer=1)
    short = score_choices(
        tiny_llama, encoded, pad_token_id=0, batch_size=2, layer=1, item_nll=False
    )
    for name in encoded:
        a, b = full[name], short[name]
        torch.testing.assert_close(b.option_logp, a.option_logp, rtol=1e-6, atol=1e-6)
        assert torch.equal(b.item_tokens, a.item_tokens) and torch.equal(b.rows, a.rows)
        assert a.item_nll.isfinite().all() and b.item_nll.isnan().all()


def test_listed_options_are_one_token_and_share_the_context(tiny_tokenizer):
    e = encode_choice(tiny_tokenizer, LISTED[0], text_format="plain")
    assert e.single_token and len(e.sequences) == 4
    start = e.answer_spans[0][0]
    assert all(s[:start] == e.sequences[0][:start] for s in e.sequences)
    letters = [tiny_tokenizer.decode(s[start:]).strip() for s in e.sequences]
    assert letters == ["A", "B", "C", "D"]


def test_margin_ignores_a_uniform_shift_and_matches_its_definition():
    torch.manual_seed(0)
    logp = -torch.rand(50, 4, dtype=torch.float64) * 10
    correct = torch.randint(0, 4, (50,))
    margin = choice_margin(logp, correct)
    for shift in (-7.5, 3.0):
        assert torch.allclose(choice_margin(logp + shift, correct), margin, atol=1e-12)
    # By hand for one item, and as the log-odds of the normalised probability.
    i, c = 3, int(correct[3])
    others = [float(logp[i, k]) for k in range(4) if k != c]
    want = float(logp[i, c]) - math.log(sum(math.exp(x) for x in others))
    assert float(margin[i]) == pytest.approx(want, rel=1e-12)
    p = torch.softmax(logp, 1)[range(50), correct]
    assert torch.allclose(margin, torch.log(p / (1 - p)), atol=1e-9)
    # A single option has no margin; a padded option (-inf) is no option.
    padded = torch.tensor([[-1.0, float("-inf")], [-2.0, -1.0]], dtype=torch.float64)
    out = choice_margin(padded, torch.tensor([0, 1]))
    assert math.isnan(out[0]) and float(out[1]) == pytest.approx(-1.0 + 2.0)


def test_plain_format_has_no_template_tokens_and_chat_content_excludes_them(tiny_tokenizer):
    special = set(tiny_tokenizer.all_special_ids)
    item = LISTED[1]
    plain = encode_choice(tiny_tokenizer, item, text_format="plain")
    seq = plain.sequences[item.correct]
    assert not special & set(seq[1:])  # only the leading BOS is special
    prompt, answers, _ = render_choice(item)
    assert tiny_tokenizer.decode(seq[1:]) == f"{prompt} {answers[item.correct]}"
    chat = encode_choice(tiny_tokenizer, item, text_format="chat")
    seq = chat.sequences[item.correct]
    text = tiny_tokenizer.decode(seq)
    assert "system" in text and "You are a helpful assistant." in text  # template is there …
    content = [t for a, b in chat.content_spans for t in range(a, b)]
    assert not special & {seq[t] for t in content}  # … but none of it is content
    assert "You are" not in tiny_tokenizer.decode([seq[t] for t in content])
    with pytest.raises(ValueError, match="`text_format` must be one of"):
        encode_choice(tiny_tokenizer, item, text_format="markdown")


def test_left_truncation_keeps_the_answer_and_the_first_token(tiny_llama, tiny_tokenizer):
    long = ChoiceItem("The court held the contract void. " * 12 + "Why?", ("ink", "law"), 1)
    full = encode_choice(tiny_tokenizer, long, text_format="plain")
    cut = encode_choice(tiny_tokenizer, long, text_format="plain", max_length=24)
    assert max(len(s) for s in cut.sequences) == 24 and cut.cut == len(full.sequences[0]) - 24
    for k in range(2):
        (a, b), (fa, fb) = cut.answer_spans[k], full.answer_spans[k]
        assert cut.sequences[k][a:b] == full.sequences[k][fa:fb]  # the answer is intact
        assert cut.sequences[k][0] == full.sequences[k][0]  # so is the attention sink
        assert cut.sequences[k][-10:] == full.sequences[k][-10:]
    scores = score_choices(tiny_llama, {"d": [cut]}, pad_token_id=0)["d"]
    for k, seq in enumerate(cut.sequences):
        want, _ = _logp_by_hand(tiny_llama, seq, *cut.answer_spans[k])
        assert float(scores.option_logp[0, k]) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="`max_length`=3 cannot hold"):
        encode_choice(tiny_tokenizer, CODE[0], text_format="plain", max_length=3)


def test_rows_are_the_content_tokens_after_the_layer(tiny_llama, tiny_tokenizer):
    encoded = {"d": encode_choices(tiny_tokenizer, LISTED, text_format="chat")}
    special = set(tiny_tokenizer.all_special_ids)
    got = score_choices(
        tiny_llama, encoded, pad_token_id=0, layer=1, exclude_token_ids=special, batch_size=2
    )["d"]
    want = []
    for e in encoded["d"]:
        seq = e.sequences[e.correct]
        with torch.no_grad():
            hidden = tiny_llama(torch.tensor([seq]), output_hidden_states=True).hidden_states[2]
        keep = sorted({t for a, b in e.content_spans for t in range(max(a, 1), b)})
        want.append(hidden[0, [t for t in keep if seq[t] not in special]])
    assert torch.allclose(got.rows, torch.cat(want), atol=1e-4)


def test_code_mutation_and_pair_choices_are_deterministic():
    solution = "    if x > 0:\n        return True\n    return x + 1\n"
    mutated = mutate_code(solution)
    assert mutated != solution and mutated == mutate_code(solution)
    assert len(mutated.splitlines()) == len(solution.splitlines())
    with pytest.raises(ValueError, match="`solution` has no site"):
        mutate_code("    pass\n")
    pairs = [Example(f"Q{i}?", f"answer {i % 5}") for i in range(12)]
    items = pair_choices(pairs)
    assert items == pair_choices(list(reversed(pairs)))[::-1]  # order does not matter
    for item, ex in zip(items, pairs, strict=True):
        assert len(item.options) == 4 and item.options[item.correct] == ex.answer
        assert len(set(item.options)) == 4
    alone = pair_choices([Example("a?", "same"), Example("b?", "same")])
    assert [len(i.options) for i in alone] == [1, 1]


def test_rotations_average_each_option_over_every_letter(tiny_llama, tiny_tokenizer):
    from sts_lightning.data.choices import rotations
    from sts_lightning.monitor.answer_scores import average_rotations

    items = LISTED + CODE
    flat = [(i, j, r) for i, item in enumerate(items) for j, r in enumerate(rotations(item), 1)]
    assert [(i, j) for i, j, _ in flat][:3] == [(0, 1), (0, 2), (0, 3)] and len(flat) == 3 + 1 + 2
    encoded = {"d": items, "r": [r for *_, r in flat]}
    encoded = {n: encode_choices(tiny_tokenizer, its) for n, its in encoded.items()}
    got = score_choices(tiny_llama, encoded, pad_token_id=0)
    merged = average_rotations(got["d"], got["r"], [(i, j) for i, j, _ in flat])
    # Oracle: each listing scored on its own, each option's log-prob found by its text.
    for i, item in enumerate(items):
        listings = [item] + [r for k, _, r in flat if k == i]
        for o, text in enumerate(item.options):
            want = []
            for listing in listings:
                e = encode_choice(tiny_tokenizer, listing)
                letter = listing.options.index(text)
                want.append(
                    _logp_by_hand(tiny_llama, e.sequences[letter], *e.answer_spans[letter])[0]
                )
            got_o = float(merged.option_logp[i, o])
            assert got_o == pytest.approx(sum(want) / len(want), rel=1e-5, abs=1e-6)
    assert torch.equal(merged.item_nll, got["d"].item_nll)  # the original listing's NLL stays
    with pytest.raises(ValueError, match="is not rotation 2 of item 0"):
        average_rotations(got["d"], got["r"], [(0, 2), (0, 1), (0, 3), (1, 1), (2, 1), (2, 2)])


def test_a_pure_letter_preference_cancels_from_the_rotated_margin():
    from sts_lightning.monitor.answer_scores import ChoiceScores, average_rotations

    g = torch.Generator().manual_seed(0)
    content, bias = torch.randn(4, generator=g).double(), 3 * torch.randn(4, generator=g).double()

    def listed(j):  # rotation j: letter o' holds option o' + j
        return (content.roll(-j) + bias)[None]

    def scores(logp, correct):
        zeros = torch.zeros(len(logp))
        return ChoiceScores(logp, torch.tensor(correct), zeros, zeros, zeros)

    base = scores(listed(0), [2])
    rotated = scores(torch.cat([listed(j) for j in (1, 2, 3)]), [1, 0, 3])
    merged = average_rotations(base, rotated, [(0, 1), (0, 2), (0, 3)])
    # Hand computation: the letter preference is gone, the content's log-odds remain.
    want = content[2] - torch.logsumexp(content[[0, 1, 3]], 0)
    torch.testing.assert_close(merged.margin, want[None])
    assert not torch.allclose(base.margin, want[None])  # the raw margin carries the bias

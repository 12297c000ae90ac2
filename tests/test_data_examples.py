"""The example and domain rules both STS callbacks share (sts_lightning.data.examples)."""

from __future__ import annotations

import pytest

from sts_lightning.data.domains import load_domain
from sts_lightning.data.examples import as_examples, examples_to_json, resolve_domains
from sts_lightning.data.prompts import Example


def test_as_examples_takes_examples_texts_and_dicts_in_order():
    given = Example("1 + 1?", "2")
    out = as_examples([given, "a plain text", {"prompt": "2 + 2?", "answer": "4"}, {"prompt": "p"}])
    assert out == [
        given,
        Example("a plain text"),
        Example("2 + 2?", "4"),
        Example("p", None),
    ]
    assert out[0] is given  # Examples pass through untouched


def test_as_examples_of_nothing_is_empty():
    assert as_examples([]) == []


@pytest.mark.parametrize(
    ("item", "error"),
    [({"answer": "no prompt"}, KeyError), ("   ", ValueError), ({"prompt": ""}, ValueError)],
)
def test_as_examples_rejects_what_is_not_an_example(item, error):
    with pytest.raises(error):
        as_examples([item])


@pytest.mark.parametrize(
    ("n", "scored", "heldout"),
    [(1, 1, None), (2, 1, 1), (3, 1, 2), (4, 2, 2), (7, 3, 4)],
)
def test_user_domains_split_in_halves(n, scored, heldout):
    texts = [f"text {i}" for i in range(n)]
    got_scored, got_heldout = resolve_domains({"d": texts}, heldout_items=32)
    assert [e.prompt for e in got_scored["d"]] == texts[:scored]
    if heldout is None:  # a single item is scored and nothing is held out
        assert "d" not in got_heldout
    else:
        assert [e.prompt for e in got_heldout["d"]] == texts[n - heldout :]


def test_user_domains_accept_dicts_and_examples():
    scored, heldout = resolve_domains(
        {"a": [{"prompt": "q1", "answer": "a1"}, Example("q2", "a2")]}, heldout_items=1
    )
    assert scored == {"a": [Example("q1", "a1")]}
    assert heldout == {"a": [Example("q2", "a2")]}


def test_built_in_domains_use_their_two_halves():
    scored, heldout = resolve_domains(["law", "code"], heldout_items=3)
    assert list(scored) == list(heldout) == ["law", "code"]
    for name in ("law", "code"):
        assert scored[name] == load_domain(name, split="score")
        assert heldout[name] == load_domain(name, split="heldout", n=3)
        assert not set(scored[name]) & set(heldout[name])


def test_examples_to_json_round_trips_through_as_examples():
    domains = {"a": [Example("q", "x"), Example("t")], "b": ("text",)}
    doc = examples_to_json(domains)
    assert doc == {
        "a": [{"prompt": "q", "answer": "x"}, {"prompt": "t", "answer": None}],
        "b": ["text"],
    }
    assert {n: as_examples(v) for n, v in doc.items()} == {
        "a": domains["a"],
        "b": [Example("text")],
    }

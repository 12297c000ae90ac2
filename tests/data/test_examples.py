"""The example and domain rules both STS callbacks share (sts_lightning.data.examples and
sts_lightning.data.row_reader)."""

from __future__ import annotations

import pytest

from sts_lightning.data.domains import load_domain
from sts_lightning.data.examples import examples_to_json, resolve_domains
from sts_lightning.data.prompts import Example
from sts_lightning.data.row_reader import as_examples, example_from_row, examples_from_rows


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


def _msg(role, content):
    return {"role": role, "content": content}


def test_rows_in_every_trl_format_become_examples():
    rows = [
        {"text": "plain text</s>"},
        {"messages": [_msg("user", "2 + 2?"), _msg("assistant", "4")]},
        {"messages": [_msg("user", "only a question")]},
        {"prompt": "3 + 3?", "completion": " 6</s>", "input_ids": [1, 2]},
        {"prompt": [_msg("user", "4 + 4?")], "completion": [_msg("assistant", "8")]},
        {"prompt": [_msg("user", "prompt only")]},
        {"prompt": "q", "answer": "a"},
        {"messages": [_msg("user", [{"type": "text", "text": "parts"}]), _msg("assistant", "x")]},
    ]
    assert examples_from_rows(rows, eos_token="</s>") == [
        Example("plain text"),
        Example("2 + 2?", "4"),
        Example("only a question"),
        Example("3 + 3?", " 6"),
        Example("4 + 4?", "8"),
        Example("prompt only"),
        Example("q", "a"),
        Example("parts", "x"),
    ]


def test_a_conversational_prompt_is_never_stringified():
    example = example_from_row(
        {"prompt": [_msg("user", "Who?")], "completion": [_msg("assistant", "Me.")]}
    )
    assert example.prompt == "Who?" and example.answer == "Me."
    assert "role" not in example.prompt and "{" not in example.prompt


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (
            {"messages": [_msg("system", "Be nice."), _msg("user", "q"), _msg("assistant", "a")]},
            "messages",
        ),
        (
            {"messages": [_msg("user", "q1"), _msg("assistant", "a1"), _msg("user", "q2")]},
            "messages",
        ),
        ({"prompt": [_msg("system", "s"), _msg("user", "q")]}, "prompt"),
    ],
)
def test_earlier_turns_raise_naming_the_field(row, field):
    with pytest.raises(ValueError, match=rf"`train_dataset` row 0.*{field}.*earlier turns"):
        examples_from_rows([row])


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"chosen": "a", "rejected": "b"}], r"row 0: expected one of .*columns \['chosen'"),
        ([{"text": 3}], r"row 0 field 'text' must be a string"),
        ([{"messages": "not a list"}], r"field 'messages': expected a non-empty list"),
        ([{"messages": [{"role": "user"}]}], r"messages'\[0\]: expected a \{'role', 'content'\}"),
        ([], r"`train_dataset` has no rows"),
        (["text"], r"row 0: expected a dict"),
    ],
)
def test_rows_in_no_supported_format_raise_clearly(rows, match):
    with pytest.raises(ValueError, match=match):
        examples_from_rows(rows)


def test_examples_from_rows_reads_at_most_limit_rows():
    rows = [{"text": f"t{i}"} for i in range(5)] + [{"bad": 1}]
    assert [e.prompt for e in examples_from_rows(rows, limit=3)] == ["t0", "t1", "t2"]

"""TRL's dataset formats where data enters: `read_examples`, `load_rows` and the data modules."""

from __future__ import annotations

import json

import pytest

from sts_lightning.data.prompts import Example
from sts_lightning.data.sources import load_rows, read_examples
from sts_lightning.training.data import PromptDataModule, SFTDataModule


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# One row per TRL format, and the Example each must give (written by hand, not computed).
FORMATS = [
    ({"text": "The Nile flows north."}, Example("The Nile flows north.")),
    ({"messages": [_user("2 + 2?"), _assistant("4")]}, Example("2 + 2?", "4")),
    ({"prompt": "3 + 3?", "completion": "6"}, Example("3 + 3?", "6")),
    ({"prompt": "3 + 4?", "answer": "7"}, Example("3 + 4?", "7")),
    (
        {"prompt": [_user("Capital of France?")], "completion": [_assistant("Paris")]},
        Example("Capital of France?", "Paris"),
    ),
    ({"prompt": [_user("Capital of Peru?")]}, Example("Capital of Peru?")),
]
IDS = ["text", "messages", "plain-completion", "plain-answer", "chat-completion", "chat-prompt"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("row", "expected"), FORMATS, ids=IDS)
def test_read_examples_reads_every_format(tmp_path, row, expected):
    assert read_examples(_jsonl(tmp_path / "d.jsonl", [row])) == [expected]


@pytest.mark.parametrize(("row", "expected"), FORMATS, ids=IDS)
def test_load_rows_reads_every_format(tmp_path, row, expected):
    want = {"prompt": expected.prompt} | ({"answer": expected.answer} if expected.answer else {})
    answer = "answer" if expected.answer else None  # prompts without answers (GRPO) say so
    from_list = load_rows([{**row, "id": 7}], answer_column=answer)
    assert from_list == [{"id": 7, **want}]  # other columns kept, the format's own dropped
    from_file = load_rows(str(_jsonl(tmp_path / "d.jsonl", [row])), answer_column=answer)
    assert from_file == [want]


def test_hf_json_file_in_chat_format(tmp_path):
    rows = [
        {"messages": [_user("5 - 1?"), _assistant("4")], "id": 1},
        {"messages": [_user("9 - 1?"), _assistant("8")], "id": 2},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows))
    assert load_rows(str(path)) == [
        {"id": 1, "prompt": "5 - 1?", "answer": "4"},
        {"id": 2, "prompt": "9 - 1?", "answer": "8"},
    ]


def test_conversational_prompt_is_never_stringified(tmp_path):
    row = {"question": [_user("Why is the sky blue?")], "solution": [_assistant("Scattering.")]}
    (got,) = load_rows([row], prompt_column="question", answer_column="solution")
    assert got == {"prompt": "Why is the sky blue?", "answer": "Scattering."}
    assert "role" not in got["prompt"] and "[" not in got["prompt"]


@pytest.mark.parametrize(
    ("row", "columns", "field"),
    [
        ({"prompt": {"text": "x"}, "answer": "y"}, {}, "'prompt'"),
        ({"question": {"text": "x"}}, {"prompt_column": "question"}, "'question'"),
        ({"prompt": "x", "answer": {"a": 1}}, {}, "'answer'"),
        ({"prompt": [{"content": "no role"}]}, {"answer_column": None}, "'prompt'"),
        ({"prompt": "x", "completion": [{"role": "assistant"}]}, {}, "'completion'"),
        ({"messages": "not a list"}, {"answer_column": None}, "'messages'"),
        ({"text": 12.5j}, {"answer_column": None}, "'text'"),
    ],
)
def test_wrong_shape_names_the_field(row, columns, field):
    with pytest.raises(ValueError, match=field):
        load_rows([row], **columns)


def test_multi_turn_conversation_is_a_clear_error(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    path = _jsonl(tmp_path / "d.jsonl", [{"messages": [system, _user("1+1?"), _assistant("2")]}])
    with pytest.raises(ValueError, match=r"d.jsonl:1 field 'messages'.*\['system', 'user'\]"):
        read_examples(path)


def test_row_in_no_format_names_the_columns(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "x"}])
    with pytest.raises(ValueError, match=r"d.jsonl:1.*'messages' or 'text'.*\['question'\]"):
        read_examples(path)


def test_unknown_task_name_says_what_a_source_can_be():
    with pytest.raises(ValueError) as err:
        load_rows("no_such_task", argument="tasks")
    message = str(err.value)
    assert "`tasks`='no_such_task' is not a built-in task, file or reachable dataset" in message
    assert "Couldn't reach" not in message


def test_data_modules_take_chat_rows(tiny_tokenizer):
    rows = [
        {"prompt": [_user(f"{i} + 1?")], "completion": [_assistant(str(i + 1))]} for i in range(4)
    ]
    sft = SFTDataModule(rows, train_size=None, tokenizer=tiny_tokenizer, batch_size=2)
    sft.setup("fit")
    assert sft.train_rows == rows  # kept in their format: the SFT module tokenizes each format
    assert sorted((r["prompt"], r["answer"]) for r in sft.train_dataset) == [
        ("0 + 1?", "1"),
        ("1 + 1?", "2"),
        ("2 + 1?", "3"),
        ("3 + 1?", "4"),
    ]
    grpo = PromptDataModule([{"messages": [_user("7 * 6?"), _assistant("42")]}], train_size=None)
    grpo.setup("fit")
    assert grpo.train_rows == [{"prompt": "7 * 6?", "answer": "42"}]


def test_prompt_data_module_keeps_conversational_prompts(tmp_path):
    from sts_lightning.data.row_reader import as_examples

    system = {"role": "system", "content": "Be brief."}
    rows = [
        {"prompt": [system, _user(f"{i} + 1?")], "completion": [_assistant(str(i + 1))], "id": i}
        for i in range(4)
    ]
    data = PromptDataModule(
        str(_jsonl(tmp_path / "chat.jsonl", rows)), train_size=None, batch_size=4,
        val_files={"mine": str(_jsonl(tmp_path / "val.jsonl", rows[:2]))},
    )  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    # As TRL: the message list as it is, system turn included; the answer is the reply's text.
    assert sorted(batch["prompt"], key=str) == [r["prompt"] for r in rows]
    assert sorted(zip(batch["id"], batch["answer"], strict=True)) == [
        (i, str(i + 1)) for i in range(4)
    ]
    assert next(iter(data.val_dataloader()[0]))["prompt"] == [r["prompt"] for r in rows[:2]]
    # Explicit items (`train_examples=`, as_examples): the last user turn is the prompt.
    assert as_examples(data.train_rows[:1])[0].prompt in {f"{i} + 1?" for i in range(4)}
    plain = PromptDataModule([{"prompt": "2 + 2?", "answer": "4"}], train_size=None)
    plain.setup("fit")
    assert plain.train_rows == [{"prompt": "2 + 2?", "answer": "4"}]
    mixed = PromptDataModule([rows[0], {"prompt": "2 + 2?", "answer": "4"}], train_size=None)
    with pytest.raises(ValueError, match="`train` mixes plain and conversational prompts"):
        mixed.setup("fit")
    no_user = [{"prompt": [system], "answer": "x"}]
    with pytest.raises(ValueError, match=r"item 0: column 'prompt' .* has no user turn"):
        PromptDataModule(no_user, train_size=None).setup("fit")

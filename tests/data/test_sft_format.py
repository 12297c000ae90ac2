"""Every TRL dataset format trains on the right tokens; truncation; format errors.

The expected labels are written by hand: each case lists the text pieces of the rendered
sequence and whether each piece carries loss; the test tokenizes the pieces one by one (after
checking they tokenize exactly as the whole text does) and compares ids and labels exactly.
"""

from __future__ import annotations

import copy
import json

import pytest

from sts_lightning.data.batching import tokenize_sft
from sts_lightning.data.chat_masks import assistant_mask, chat_ids
from sts_lightning.data.row_reader import examples_from_rows
from sts_lightning.data.sft_format import SFTFormat, tokenize_rows
from sts_lightning.data.sources import load_rows
from sts_lightning.training.data import SFTDataModule

SYSTEMS = {
    "tiny": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "smollm2": "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n",
}


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module", params=["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def chat(request, tiny_tokenizer):
    """``(tokenizer, the default system turn its template adds)``."""
    if request.param == "tiny":
        return tiny_tokenizer, SYSTEMS["tiny"]
    from transformers import AutoTokenizer

    from sts_lightning.model.loading import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2")), SYSTEMS["smollm2"]


def expected(tokenizer, pieces: list[tuple[str, bool]], system: str):
    """``(input_ids, labels)`` of ``(text, trained)`` pieces, each tokenized on its own."""
    ids, labels = [], []
    for text, trained in pieces:
        piece = tokenizer(text.replace("<SYS>", system), add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    whole = "".join(text for text, _ in pieces).replace("<SYS>", system)
    # The oracle is only valid if the cuts fall on token boundaries of the whole text.
    assert ids == tokenizer(whole, add_special_tokens=False)["input_ids"]
    return ids, labels


Q, GEN = "<|im_start|>user\n", "<|im_start|>assistant\n"
END = "<|im_end|>"
CASES = {
    "text": ({"text": "The Nile flows north."}, {}, [("The Nile flows north." + END, True)]),
    "text-field": (
        {"body": "Rivers flow."},
        {"dataset_text_field": "body"},
        [("Rivers flow." + END, True)],
    ),
    "messages": (
        {"messages": [_user("2 + 2?"), _assistant("4")]},
        {},
        [(f"<SYS>{Q}2 + 2?{END}\n{GEN}4{END}\n", True)],
    ),
    "messages-assistant-only-multi-turn": (
        {"messages": [_user("Hi?"), _assistant("Yo."), _user("And?"), _assistant("Done.")]},
        {"assistant_only_loss": True},
        [
            (f"<SYS>{Q}Hi?{END}\n{GEN}", False),
            (f"Yo.{END}\n", True),
            (f"{Q}And?{END}\n{GEN}", False),
            (f"Done.{END}\n", True),
        ],
    ),
    "messages-system-assistant-only": (
        {"messages": [{"role": "system", "content": "Be brief."}, _user("Hi?"), _assistant("Yo.")]},
        {"assistant_only_loss": True},
        [(f"<|im_start|>system\nBe brief.{END}\n{Q}Hi?{END}\n{GEN}", False), (f"Yo.{END}\n", True)],
    ),
    "plain-completion": (
        {"prompt": "3 + 3?", "completion": " 6"},
        {},
        [("3 + 3?", False), (" 6" + END, True)],
    ),
    "plain-completion-all-tokens": (
        {"prompt": "3 + 3?", "completion": " 6"},
        {"completion_only_loss": False},
        [("3 + 3? 6" + END, True)],
    ),
    "chat-completion": (
        {"prompt": [_user("Capital of France?")], "completion": [_assistant("Paris")]},
        {},
        [(f"<SYS>{Q}Capital of France?{END}\n{GEN}", False), (f"Paris{END}\n", True)],
    ),
    "chat-completion-assistant-only": (
        {"prompt": [_user("Capital of Peru?")], "completion": [_assistant("Lima")]},
        {"assistant_only_loss": True, "completion_only_loss": False},
        [(f"<SYS>{Q}Capital of Peru?{END}\n{GEN}", False), (f"Lima{END}\n", True)],
    ),
    "pair": (
        {"prompt": "3 + 4?", "answer": "7"},
        {},
        [(f"<SYS>{Q}3 + 4?{END}\n{GEN}", False), ("7" + END, True), ("\n", False)],
    ),
    "pair-named-columns": (
        {"question": "5 - 1?", "solution": 4, "id": 3},
        {"prompt_column": "question", "answer_column": "solution"},
        [(f"<SYS>{Q}5 - 1?{END}\n{GEN}", False), ("4" + END, True), ("\n", False)],
    ),
    "pair-all-tokens": (
        {"prompt": "3 + 4?", "answer": "7"},
        {"completion_only_loss": False},
        [(f"<SYS>{Q}3 + 4?{END}\n{GEN}7{END}\n", True)],
    ),
}


@pytest.mark.parametrize(("row", "settings", "pieces"), CASES.values(), ids=CASES.keys())
def test_labels_match_hand_tokenized_pieces(chat, row, settings, pieces):
    tokenizer, system = chat
    want_ids, want_labels = expected(tokenizer, pieces, system)
    [item] = tokenize_rows(tokenizer, [row], SFTFormat(**settings))
    assert item["input_ids"] == want_ids
    assert item["labels"] == want_labels


def test_assistant_mask_agrees_with_generation_markers(tiny_tokenizer):
    """A template with ``{% generation %}`` around what we call the assistant turn: the masks
    transformers computes from the markers and ours from rendering prefixes agree."""
    marked = copy.deepcopy(tiny_tokenizer)
    marked.chat_template = marked.chat_template.replace(
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}",
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
        "{% generation %}{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>\n' }}{% endif %}",
    )
    messages = [_user("What is 12 + 7?"), _assistant("19."), _user("And 3 * 4?")]
    messages += [_assistant("The answer is 12."), _user("Thanks"), _assistant("You are welcome.")]
    out = marked.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert sum(out["assistant_masks"]) > 10  # the markers took effect
    assert out["input_ids"] == chat_ids(tiny_tokenizer, messages)
    assert [bool(m) for m in out["assistant_masks"]] == assistant_mask(tiny_tokenizer, messages)


def test_pairs_are_labelled_as_before(tiny_tokenizer):
    """The (prompt, answer) path gives the same tokens and labels as ``tokenize_sft``."""
    rows = load_rows("arithmetic", size=6, seed=0)
    for kwargs in ({}, {"system_prompt": "Be exact."}, {"label_end_of_turn": False}):
        old = tokenize_sft(tiny_tokenizer, rows, max_length=256, **kwargs)
        new = tokenize_rows(tiny_tokenizer, rows, SFTFormat(max_length=256, **kwargs))
        assert [(x["input_ids"], x["labels"]) for x in new] == [
            (x["input_ids"], x["labels"]) for x in old
        ]
        assert [(x["prompt"], x["answer"]) for x in new] == [
            (r["prompt"], r["answer"]) for r in rows
        ]


def test_truncation_keeps_the_start_and_drops_rows_without_loss(tiny_tokenizer, caplog):
    text = {"text": "Photosynthesis converts light energy into chemical energy in plants."}
    [full] = tokenize_rows(tiny_tokenizer, [text], SFTFormat(max_length=999))
    [cut] = tokenize_rows(tiny_tokenizer, [text], SFTFormat(max_length=7))
    assert cut["input_ids"] == full["input_ids"][:7] and cut["labels"] == full["labels"][:7]
    long_prompt = {"prompt": "a much longer question " * 6, "answer": "no"}
    [pair] = tokenize_rows(tiny_tokenizer, [long_prompt], SFTFormat(max_length=999))
    answer_at = next(k for k, t in enumerate(pair["labels"]) if t != -100)
    items = tokenize_rows(tiny_tokenizer, [text, long_prompt], SFTFormat(max_length=answer_at))
    assert len(items) == 1 and "1 of 2 rows dropped" in caplog.text
    kept = tokenize_rows(tiny_tokenizer, [long_prompt], SFTFormat(max_length=answer_at + 1))
    assert [t for t in kept[0]["labels"] if t != -100] == [pair["input_ids"][answer_at]]
    with pytest.raises(ValueError, match=f"`max_length`={answer_at} truncates every answer"):
        tokenize_rows(tiny_tokenizer, [long_prompt], SFTFormat(max_length=answer_at))


@pytest.mark.parametrize(
    ("row", "settings", "match"),
    [
        (
            {"question": "x", "extra": 1},
            {},
            r"row 0 of `train`: expected the columns 'messages' \(conversational\), 'prompt' \+ "
            r"'completion', 'text' \(`dataset_text_field`\) or 'prompt' \+ 'answer' "
            r"\(`prompt_column` \+ `answer_column`\), got the columns \['extra', 'question'\]",
        ),
        ({"prompt": "x"}, {}, r"row 0 of `train` has no answer.*got the columns \['prompt'\]"),
        ({"prompt": "x", "answer": None}, {}, "has no answer"),
        ({"messages": "hi"}, {}, "field 'messages': expected a non-empty list"),
        ({"messages": [{"content": "hi"}]}, {}, "field 'messages': expected a non-empty list"),
        ({"text": ["a"]}, {}, "field 'text': expected a string, got list"),
        ({"prompt": "x", "completion": 3.5j}, {}, "field 'completion': expected a string"),
        ({"text": "a"}, {"assistant_only_loss": True}, "`assistant_only_loss`=True needs conv"),
        (
            {"prompt": "a", "completion": "b"},
            {"assistant_only_loss": True},
            "`assistant_only_loss`=True needs conversational rows",
        ),
        ({"messages": [_user("a")]}, {"assistant_only_loss": True}, "no assistant turn"),
        ({"text": "a"}, {"completion_only_loss": True}, "`completion_only_loss`=True needs"),
    ],
)
def test_bad_rows_name_the_problem(tiny_tokenizer, row, settings, match):
    with pytest.raises(ValueError, match=match):
        tokenize_rows(tiny_tokenizer, [row], SFTFormat(**settings))


def test_bad_settings_name_the_argument(tiny_tokenizer):
    with pytest.raises(ValueError, match="`max_length` must be >= 2"):
        SFTFormat(max_length=1)
    with pytest.raises(ValueError, match="`completion_only_loss` must be None, True or False"):
        SFTFormat(completion_only_loss="yes")
    with pytest.raises(ValueError, match="`dataset_text_field` must be a non-empty string"):
        SFTFormat(dataset_text_field="")
    with pytest.raises(ValueError, match="`packing` must be a bool"):
        SFTDataModule(packing="yes")
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    with pytest.raises(ValueError, match="`tokenizer` has no chat template"):
        tokenize_rows(plain, [{"messages": [_user("a"), _assistant("b")]}], SFTFormat())


def test_data_module_reads_multi_turn_files(tiny_tokenizer, tmp_path):
    """A JSON-lines file of multi-turn conversations trains on every assistant turn; the
    conversation rides along, so that callbacks reading examples from the dataset refuse it
    as the one row reader does everywhere (an Example has no place for earlier turns)."""
    rows = [
        {
            "messages": [
                _user(f"{i} + 1?"),
                _assistant(f"{i + 1}."),
                _user("Sure?"),
                _assistant("Yes."),
            ]
        }
        for i in range(3)
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = SFTDataModule(
        str(path), train_size=None, tokenizer=tiny_tokenizer, assistant_only_loss=True
    )
    data.setup("fit")
    for item in data.train_dataset:
        trained = [t for t in item["labels"] if t != -100]
        answer = item["messages"][1]["content"]
        assert tiny_tokenizer.decode(trained) == f"{answer}{END}\nYes.{END}\n"
    assert sorted(x["messages"][0]["content"] for x in data.train_dataset) == [
        "0 + 1?",
        "1 + 1?",
        "2 + 1?",
    ]
    assert all("prompt" not in x for x in data.train_dataset)
    with pytest.raises(ValueError, match=r"row 0 field 'messages'.*earlier turns"):
        examples_from_rows(data.train_dataset)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0 of `train`: expected .*\['input'\]"):
        SFTDataModule(str(bad), train_size=None, tokenizer=tiny_tokenizer).setup("fit")

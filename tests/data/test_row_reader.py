"""The one row reader (sts_lightning.data.row_reader): both callbacks read rows the same way."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sts_lightning.callbacks import STSCallback
from sts_lightning.data.prompts import Example
from sts_lightning.data.row_reader import row_format
from sts_lightning.hf import STSTrainerCallback
from sts_lightning.training.data import PromptDataModule, SFTDataModule


def _msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


class _HFTrainer:  # weak-referenceable, as HF's Trainer
    def __init__(self, dataset):
        self.train_dataset = dataset


def _lightning_read(dataset) -> list[Example]:
    callback = STSCallback("sae", domains=["law"])
    trainer = SimpleNamespace(train_dataloader=SimpleNamespace(dataset=dataset))
    return callback._from_dataloader(trainer)


def _hf_read(dataset) -> list[Example]:
    callback = STSTrainerCallback(sae="sae", domains=["law"], trainer=_HFTrainer(dataset))
    return callback._from_dataset(None, SimpleNamespace(eos_token=None))


def _read(reader, dataset):
    try:
        return reader(dataset)
    except ValueError as err:
        return str(err).split("; or pass")[0].split(": ", 1)[1]  # the rule, not who read it


MULTI_TURN = {
    "messages": [
        _msg("user", "1 + 1?"),
        _msg("assistant", "2."),
        _msg("user", "Sure?"),
        _msg("assistant", "Yes."),
    ]
}
SYSTEM = {"prompt": [_msg("system", "Be brief."), _msg("user", "2 + 2?")], "answer": "4"}
ONE_TURN = {"messages": [_msg("user", "3 + 3?"), _msg("assistant", "6")]}


@pytest.mark.parametrize("row", [MULTI_TURN, SYSTEM, ONE_TURN], ids=["multi", "system", "one"])
def test_a_row_gets_the_same_answer_from_both_callbacks(row):
    dataset = [ONE_TURN, row, ONE_TURN]
    lightning, hf = _read(_lightning_read, dataset), _read(_hf_read, dataset)
    assert lightning == hf
    if row is ONE_TURN:
        assert hf == [Example("3 + 3?", "6")] * 3
    else:
        assert "earlier turns" in hf


def test_multi_turn_sft_items_are_refused_like_the_raw_rows(tiny_tokenizer, tmp_path):
    """Tokenized (and packed) SFT items carry the conversation, so the Lightning callback
    refuses them with the message the HF callback gives for the raw rows."""
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [ONE_TURN, MULTI_TURN, ONE_TURN]))
    for packing in (False, True):
        data = SFTDataModule(
            str(path), train_size=None, tokenizer=tiny_tokenizer, packing=packing, seed=1
        )
        data.setup("fit")
        with pytest.raises(ValueError, match=r"field 'messages'.*earlier turns.*STSCallback"):
            _lightning_read(data.train_dataset)
    with pytest.raises(ValueError, match=r"field 'messages'.*earlier turns.*STSTrainerCallback"):
        _hf_read([ONE_TURN, MULTI_TURN, ONE_TURN])


def test_one_format_decision():
    assert row_format({"question": "q", "solution": "s"}, prompt_column="question",
                      answer_column="solution") == "pair"  # fmt: skip
    assert row_format(MULTI_TURN) == "messages"
    with pytest.raises(ValueError, match=r"has no answer"):
        row_format({"prompt": "q"})


def test_a_prompt_only_dataset_with_extra_columns_loads_by_default(tmp_path):
    path = tmp_path / "grpo.jsonl"
    rows = [{"prompt": f"{i} + 1?", "solution": str(i + 1)} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = PromptDataModule(str(path), train_size=None, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"prompt", "solution"}
    assert sorted(zip(batch["prompt"], batch["solution"], strict=True)) == sorted(
        (r["prompt"], r["solution"]) for r in rows
    )

"""Packing: best-fit decreasing layout, and packed rows carry exactly the unpacked loss.

The loss check sums the NLL of the same examples packed and unpacked with tiny random models of
every supported family; the same sums without the position-id reset (or with an attention mask,
which turns the model's packed-sequence detection off) differ, so cross-contamination between
packed examples would be caught.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer

from sts_lightning.data.batching import SFTCollator
from sts_lightning.data.packing import pack_sequences
from sts_lightning.data.sft_format import SFTFormat, tokenize_rows
from sts_lightning.training.data import SFTDataModule
from sts_lightning.training.sft import SFTModule, answer_nll

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i} + 7?"},
            {"role": "assistant", "content": f"{i + 7}."},
        ]
    }
    for i in range(6)
] + [{"text": "The court held that the contract was void. " * k} for k in (1, 2, 3)]
ROWS += [{"prompt": "Solve 3 * 4 - 5.", "completion": " The answer is 7."}]


def _item(ids: list[int]) -> dict:
    return {"input_ids": ids, "labels": ids}


def test_best_fit_decreasing_layout():
    # Lengths 5, 3, 4, 2, 1 into rows of 6: longest first, each into the fullest row it fits.
    items = [_item([10, 11, 12, 13, 14]), _item([20, 21, 22]), _item([30, 31, 32, 33])]
    items += [_item([40, 41]), _item([50])]
    rows = pack_sequences(items, max_length=6)
    assert [r["seq_lengths"] for r in rows] == [[5, 1], [4, 2], [3]]
    assert rows[1]["input_ids"] == [30, 31, 32, 33, 40, 41]
    assert rows[1]["position_ids"] == [0, 1, 2, 3, 0, 1]
    assert rows[1]["labels"] == [-100, 31, 32, 33, -100, 41]  # nothing predicts a first token
    with pytest.raises(ValueError, match="more than `max_length`=4: truncate before packing"):
        pack_sequences(items, max_length=4)


def test_collator_gives_positions_and_no_attention_mask():
    rows = pack_sequences([_item([1, 2, 3]), _item([4, 5]), _item([6, 7, 8, 9])], max_length=5)
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=1, name="math")(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids", "name"}
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["input_ids"].tolist() == [[6, 7, 8, 9, 0], [1, 2, 3, 4, 5]]
    assert batch["labels"][0, -1] == -100
    with pytest.raises(ValueError, match="mixes packed rows"):
        SFTCollator(pad_token_id=0)([rows[0], _item([1, 2])])
    rounded = SFTCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert rounded["position_ids"].tolist() == [[0, 1, 2, 3, 0, 0, 0, 0], [0, 1, 2, 0, 1, 0, 0, 0]]


def _sums(model, unpacked, packed, positions=None, mask=None):
    with torch.no_grad():
        nll, n = answer_nll(
            model, unpacked["input_ids"], unpacked["attention_mask"], unpacked["labels"]
        )
        positions = packed["position_ids"] if positions is None else positions
        p_nll, p_n = answer_nll(model, packed["input_ids"], mask, packed["labels"], positions)
    assert n == p_n  # the same trained tokens
    return float(nll), float(p_nll)


def test_packed_and_unpacked_losses_agree(tiny_model, tiny_tokenizer, one_thread):
    items = tokenize_rows(tiny_tokenizer, ROWS, SFTFormat(max_length=96))
    packed_rows = pack_sequences(items, max_length=96)
    assert len(packed_rows) < len(items) and max(len(r["seq_lengths"]) for r in packed_rows) > 1
    unpacked = SFTCollator(tiny_tokenizer.pad_token_id)(items)
    packed = SFTCollator(tiny_tokenizer.pad_token_id)(packed_rows)
    nll, packed_nll = _sums(tiny_model, unpacked, packed)
    assert packed_nll == pytest.approx(nll, rel=1e-6, abs=1e-5)
    # Cross-contamination is detected: positions that do not restart, or an attention mask
    # (which turns the model's packed-sequence detection off), change the sum.
    arange = torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])
    _, leaked = _sums(tiny_model, unpacked, packed, positions=arange)
    assert abs(leaked - nll) > 1e-2
    _, masked = _sums(tiny_model, unpacked, packed, mask=torch.ones_like(packed["input_ids"]))
    assert abs(masked - nll) > 1e-2


class _AsFlash(torch.nn.Module):
    """A model that says it runs flash attention (the rows reach it joined) and runs SDPA."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.shapes = model, []
        self.config = SimpleNamespace(_attn_implementation="flash_attention_2")

    def forward(self, **kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        return self.model(**kwargs)


def test_flash_attention_gets_one_row(tiny_llama, tiny_tokenizer, one_thread):
    items = tokenize_rows(tiny_tokenizer, ROWS, SFTFormat(max_length=96))
    unpacked = SFTCollator(tiny_tokenizer.pad_token_id)(items)
    packed = SFTCollator(tiny_tokenizer.pad_token_id)(pack_sequences(items, max_length=96))
    flash = _AsFlash(tiny_llama)
    nll, packed_nll = _sums(flash, unpacked, packed)
    assert flash.shapes[-1] == (1, packed["input_ids"].numel())
    assert packed_nll == pytest.approx(nll, rel=1e-6, abs=1e-5)


def test_data_module_packs_and_module_trains(tmp_path, tiny_llama, tiny_tokenizer, one_thread):
    path = tmp_path / "tiny"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    kwargs = dict(train_size=None, tokenizer=tiny_tokenizer, max_length=96, batch_size=2)
    kwargs["val_from_train"] = 2
    plain = SFTDataModule(ROWS, **kwargs)
    packed = SFTDataModule(ROWS, packing=True, **kwargs)
    plain.setup("fit")
    packed.setup("fit")
    assert all(len(r["input_ids"]) <= 96 for r in packed.train_dataset)
    assert sum(len(r["seq_lengths"]) for r in packed.train_dataset) == len(ROWS) - 2
    batch = next(iter(packed.train_dataloader()))
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["labels"].shape
    examples = [e for r in packed.train_dataset for e in r["examples"]]  # for the STS callback
    assert sorted(e["prompt"] for e in examples) == sorted(x["prompt"] for x in plain.train_dataset)
    module = SFTModule(str(path), save_hf_on_fit_end=False)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=packed)
    trained = [r["labels"] for r in packed.train_dataset]
    assert 0 < int(module.tokens_seen) <= sum(sum(t != -100 for t in x) for x in trained)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/loss/train_heldout" in trainer.callback_metrics


@pytest.mark.slow
def test_packed_and_unpacked_losses_agree_on_smollm2(one_thread):
    from sts_lightning.model.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("embedded:smollm2", dtype="float32")
    model.eval()
    items = tokenize_rows(tokenizer, ROWS, SFTFormat(max_length=128))
    unpacked = SFTCollator(tokenizer.pad_token_id)(items)
    packed = SFTCollator(tokenizer.pad_token_id)(pack_sequences(items, max_length=128))
    assert packed["input_ids"].shape[0] < len(items)
    nll, packed_nll = _sums(model, unpacked, packed)
    assert packed_nll == pytest.approx(nll, rel=1e-5)
    arange = torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])
    _, leaked = _sums(model, unpacked, packed, positions=arange)
    assert abs(leaked - nll) > 1e-2 * abs(nll) / len(items)


def test_sts_callback_reads_the_examples_of_packed_rows():
    from sts_lightning.callbacks import STSCallback
    from sts_lightning.data.prompts import Example

    examples = [{"prompt": f"{i} + 1?", "answer": f"{i + 1}"} for i in range(7)]
    rows = [{"input_ids": [1], "examples": examples[k : k + 3]} for k in (0, 3, 6)]
    callback = STSCallback(sae="unused", domains=["math"], max_train_examples=5)
    trainer = SimpleNamespace(train_dataloader=SimpleNamespace(dataset=rows))
    got = callback._from_dataloader(trainer)
    assert got == [Example(e["prompt"], e["answer"]) for e in examples[:5]]

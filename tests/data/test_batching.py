"""Sources, answer-only labels, padding, length grouping, resumable shuffling and the two data
modules."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sts_lightning.data.batching import (
    SFTCollator,
    length_grouped_indices,
    resumable_loader,
    tokenize_sft,
)
from sts_lightning.data.prompts import Example
from sts_lightning.data.sources import load_rows
from sts_lightning.training.data import PromptDataModule, SFTDataModule

EXAMPLES = [Example(f"What is {i} + 7?", f"The answer is {i + 7}.") for i in range(10)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_labels_are_the_answer_and_its_end_of_turn(tiny_tokenizer):
    [item] = tokenize_sft(tiny_tokenizer, [{"prompt": "2+2?", "answer": "It is 4."}], max_length=99)
    labelled = [t for t in item["labels"] if t != -100]
    assert tiny_tokenizer.decode(labelled) == "It is 4.<|im_end|>"
    start = item["labels"].index(labelled[0])
    assert (
        item["labels"][start : start + len(labelled)] == item["input_ids"][start:][: len(labelled)]
    )
    assert tiny_tokenizer.decode(item["input_ids"][:start]).endswith("<|im_start|>assistant\n")
    [bare] = tokenize_sft(
        tiny_tokenizer, [{"prompt": "2+2?", "answer": "4"}], max_length=99, label_end_of_turn=False
    )
    assert tiny_tokenizer.decode([t for t in bare["labels"] if t != -100]) == "4"


def test_collate_pads_right_and_masks(tiny_tokenizer):
    items = tokenize_sft(
        tiny_tokenizer, load_rows([*EXAMPLES[:2], Example("x", "a b c d e f")]), max_length=99
    )
    batch = SFTCollator(pad_token_id=0, name="math")(items)
    lengths = [len(x["input_ids"]) for x in items]
    assert batch["input_ids"].shape == (3, 64) and batch["name"] == "math"  # 50 -> 2 x 32
    assert batch["attention_mask"].sum(1).tolist() == lengths
    exact = SFTCollator(pad_token_id=0, pad_to_multiple_of=1)(items)["input_ids"]
    assert exact.shape == (3, max(lengths)) and torch.equal(
        exact, batch["input_ids"][:, : max(lengths)]
    )
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == 0).all() and (batch["labels"][pad] == -100).all()
    assert pad[:, -1].any() and not pad[:, 0].any()  # right padding


def test_max_length_truncation(tiny_tokenizer, caplog):
    rows = load_rows([Example("short?", "yes"), Example("a much longer question " * 6, "no")])
    lengths = [len(x["input_ids"]) for x in tokenize_sft(tiny_tokenizer, rows, max_length=999)]
    items = tokenize_sft(
        tiny_tokenizer, rows, max_length=lengths[0]
    )  # the long one loses its answer
    assert len(items) == 1 and "dropped" in caplog.text
    with pytest.raises(ValueError, match="`max_length`=8 truncates every answer"):
        tokenize_sft(tiny_tokenizer, rows, max_length=8)
    with pytest.raises(ValueError, match="`max_length`"):
        SFTDataModule(EXAMPLES, max_length=1)


def test_sources_jsonl_hf_files_and_lists(tmp_path):
    rows = [{"question": f"q{i}", "solution": f"s{i}", "id": i} for i in range(5)]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    got = load_rows(path, prompt_column="question", answer_column="solution")
    assert got[0] == {"id": 0, "prompt": "q0", "answer": "s0"}
    (tmp_path / "hf").mkdir()
    _jsonl(tmp_path / "hf" / "train.jsonl", rows)  # a local `datasets` directory
    from_hf = load_rows(str(tmp_path / "hf"), prompt_column="question", answer_column="solution")
    assert from_hf == got
    subset = load_rows(path, size=3, seed=1, prompt_column="question", answer_column="solution")
    assert len(subset) == 3 and subset == load_rows(
        path, size=3, seed=1, prompt_column="question", answer_column="solution"
    )
    built_in = load_rows("arithmetic", size=4, seed=0)
    assert len(built_in) == 4 and built_in[0]["task"] == "arithmetic"


def test_source_errors(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [{"question": "q", "solution": "s"}])
    with pytest.raises(ValueError, match=r"`prompt_column`='prompt' .*\['question', 'solution'\]"):
        load_rows(path)
    with pytest.raises(ValueError, match=r"`answer_column`='answer'.*\['question', 'solution'\]"):
        load_rows(path, prompt_column="question")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="has no rows"):
        load_rows(str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match="has no rows"):
        load_rows([])
    with pytest.raises(ValueError, match="`train_size` must be <= 1"):
        load_rows(path, size=2, prompt_column="question", answer_column="solution")
    with pytest.raises(ValueError, match="`train_size` must be set"):
        load_rows("arithmetic")


def test_sft_data_module_builtins_and_validation(tiny_tokenizer, tmp_path):
    val = _jsonl(tmp_path / "v.jsonl", [{"prompt": f"p{i}", "answer": "a"} for i in range(9)])
    data = SFTDataModule(
        "arithmetic",
        train_size=16,
        val_domains=["math"],
        val_files={"mine": val},
        val_size=4,
        val_from_train=3,
        tokenizer=tiny_tokenizer,
        batch_size=8,
    )
    data.setup("fit")
    assert len(data.train_dataset) == 16
    assert {k: len(v) for k, v in data.val_datasets.items()} == {
        "math": 4,
        "mine": 4,
        "train_heldout": 3,
    }
    train_prompts = {row["prompt"] for row in data.train_rows}
    assert not train_prompts & {row["prompt"] for row in data.val_rows["train_heldout"]}
    names = [next(iter(loader))["name"] for loader in data.val_dataloader()]
    assert names == ["math", "mine", "train_heldout"]
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and "name" not in batch
    with pytest.raises(ValueError, match="unique"):
        SFTDataModule(val_domains=["math"], val_files={"math": val})


def test_empty_or_answerless_sft_data(tiny_tokenizer, tmp_path):
    data = SFTDataModule([Example("no answer here")], train_size=None, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="has no answer"):
        data.setup("fit")
    (tmp_path / "empty.jsonl").write_text("")
    data = SFTDataModule(str(tmp_path / "empty.jsonl"), train_size=None, tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="has no rows"):
        data.setup("fit")


def _order(loader) -> list[int]:
    return [i for batch in loader for i in batch]


def test_shuffle_is_seeded_per_epoch_and_resumes_mid_epoch():
    def loader(seed=0, **kwargs):
        return resumable_loader(list(range(10)), batch_size=3, seed=seed, collate_fn=list, **kwargs)

    a, b = loader(), loader()
    assert _order(a) == _order(b) != list(range(10))
    assert _order(loader(seed=1)) != _order(a)
    a.sampler.set_epoch(1)
    epoch1 = _order(a)
    assert epoch1 != _order(b) and sorted(epoch1) == list(range(10))

    it = iter(a)
    seen = next(it) + next(it)
    state = a.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # Lightning does this before the first batch
    assert seen + _order(resumed) == epoch1
    resumed.sampler.set_epoch(2)  # the next epoch starts from its beginning
    assert len(_order(resumed)) == 10


def test_ranks_share_the_data():
    def rank(r):
        trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": r})
        return _order(
            resumable_loader(
                list(range(10)), batch_size=2, seed=0, trainer=trainer, collate_fn=list
            )
        )

    assert sorted(rank(0) + rank(1)) == list(range(10))


# Mixed lengths: 41 to 80 tokens, interleaved.
MIXED = [Example("Q " + "ab " * (i % 20), f"A{i}") for i in range(96)]


@pytest.mark.parametrize(("n", "batch_size", "mult"), [(96, 4, None), (7, 3, None), (50, 4, 2)])
def test_length_grouping_is_transformers_group_by_length(n, batch_size, mult):
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = torch.randint(1, 30, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    ours = length_grouped_indices(lengths, batch_size, torch.Generator().manual_seed(5), mult)
    theirs = get_length_grouped_indices(
        lengths, batch_size, mult, generator=torch.Generator().manual_seed(5)
    )
    assert ours == theirs and sorted(ours) == list(range(n))
    assert lengths[ours[0]] == max(lengths)  # the longest first


def _padding_share(loader) -> float:
    masks = [batch["attention_mask"] for batch in loader]
    return sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks)


def _sft(tokenizer, **kwargs) -> SFTDataModule:
    kwargs = {"train_size": None, "batch_size": 4, "tokenizer": tokenizer, "seed": 3} | kwargs
    kwargs.setdefault("pad_to_multiple_of", 1)  # the padding that grouping saves, unrounded
    data = SFTDataModule(MIXED, max_length=128, **kwargs)
    data.setup("fit")
    return data


def test_grouped_batches_pad_less_and_see_every_row_once_per_epoch(tiny_tokenizer):
    grouped, plain = _sft(tiny_tokenizer), _sft(tiny_tokenizer, group_by_length=False)
    assert grouped.group_by_length and not plain.group_by_length  # the default groups
    rows = sorted(tuple(item["input_ids"]) for item in grouped.train_dataset)
    for epoch in range(3):
        shares = []
        for data in (grouped, plain):
            loader = data.train_dataloader()
            loader.sampler.set_epoch(epoch)
            seen = [
                tuple(ids[mask.bool()].tolist())
                for batch in loader
                for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
            ]
            assert sorted(seen) == rows  # every row once: no repeat, no loss
            shares.append(_padding_share(loader))
        # A shuffled batch of 4 pads ~17% of itself here; a grouped one ~4%.
        assert shares[0] < shares[1] / 3 and shares[1] > 0.1, shares


def test_grouped_order_is_seeded_and_differs_per_epoch(tiny_tokenizer):
    def order(data, epoch):
        loader = data.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return list(loader.sampler)

    a, b = _sft(tiny_tokenizer), _sft(tiny_tokenizer)
    assert order(a, 0) == order(b, 0) == order(a, 0)
    assert order(a, 1) != order(a, 0) and sorted(order(a, 1)) == list(range(len(MIXED)))
    assert order(_sft(tiny_tokenizer, seed=4), 0) != order(a, 0)
    # Not sorted over the epoch: megabatches (here 6 batches of 4) come in shuffled order.
    lengths = [len(item["input_ids"]) for item in a.train_dataset]
    epoch = [lengths[i] for i in order(a, 0)]
    assert epoch != sorted(epoch, reverse=True)
    assert epoch[:24] == sorted(epoch[:24], reverse=True)  # within one megabatch: sorted


def test_grouped_loader_resumes_mid_epoch_with_the_same_batches():
    lengths = [(7 * i) % 23 for i in range(100)]  # megabatches of 6 batches of 4

    def loader(**kwargs):
        return resumable_loader(list(range(100)), batch_size=4, seed=2, collate_fn=list, **kwargs)

    full = loader(lengths=lengths)
    full.sampler.set_epoch(1)
    batches = list(full)
    plain = loader()
    plain.sampler.set_epoch(1)
    assert sorted(map(sorted, batches)) != sorted(map(sorted, plain))  # grouping regroups
    it = iter(full)
    next(it), next(it), next(it)
    resumed = loader(lengths=lengths)
    resumed.load_state_dict(full.state_dict())
    resumed.sampler.set_epoch(1)  # Lightning does this before the first batch
    assert list(resumed) == batches[3:]
    assert len(list(resumed)) == len(batches)  # the next pass starts the epoch again


def test_grouped_ranks_share_the_data_in_batches_of_similar_lengths():
    lengths = list(range(40))

    def rank(r):
        trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": r})
        return list(resumable_loader(list(range(40)), batch_size=4, seed=0, trainer=trainer,
                                     lengths=lengths, collate_fn=list))  # fmt: skip

    ranks = rank(0), rank(1)
    assert sorted(i for r in ranks for batch in r for i in batch) == list(range(40))
    # Each step's 2 × 4 items are one batch of 8 grouped over all ranks' items.
    whole = length_grouped_indices(lengths, 8, torch.Generator().manual_seed(0))
    steps = [sorted(a + b) for a, b in zip(*ranks, strict=True)]
    assert steps == [sorted(whole[i : i + 8]) for i in range(0, 40, 8)]


def test_grouping_needs_one_length_per_item():
    with pytest.raises(ValueError, match="`lengths` has 2 items, the dataset 3"):
        resumable_loader([0, 1, 2], batch_size=1, seed=0, lengths=[1, 2])
    with pytest.raises(ValueError, match="`group_by_length` must be a bool"):
        SFTDataModule(MIXED, group_by_length="yes")
    with pytest.raises(ValueError, match="`pad_to_multiple_of` must be a positive int, got 0"):
        SFTDataModule(MIXED, pad_to_multiple_of=0)


def test_prompt_data_module_batches_are_dicts_of_lists(tmp_path):
    rows = [{"q": f"q{i}", "a": i, "level": i % 2} for i in range(6)]
    data = PromptDataModule(
        _jsonl(tmp_path / "p.jsonl", rows),
        train_size=None,
        prompt_column="q",
        answer_column="a",
        val_from_train=2,
        batch_size=2,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"prompt", "answer", "level"} and len(batch["prompt"]) == 2
    assert all(isinstance(a, str) for a in batch["answer"])
    [val] = data.val_dataloader()
    assert next(iter(val))["name"] == "train_heldout"
    built_in = PromptDataModule("arithmetic", train_size=4, batch_size=4)
    built_in.setup("fit")
    assert next(iter(built_in.train_dataloader()))["task"] == ["arithmetic"] * 4
    with pytest.raises(ValueError, match=r"`prompt_column`='prompt'"):
        PromptDataModule(_jsonl(tmp_path / "p2.jsonl", rows), train_size=None).setup("fit")


def test_collate_tensors_have_long_dtype(tiny_tokenizer):
    batch = SFTCollator(0)(tokenize_sft(tiny_tokenizer, load_rows(EXAMPLES[:2]), max_length=64))
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "labels"))

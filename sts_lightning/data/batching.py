"""From rows to batches: answer-only labels, padding, length grouping, and a training loader
that can resume.

:func:`tokenize_sft` renders each (prompt, answer) pair with the tokenizer's chat template
(:func:`~sts_lightning.data.prompts.encode_example`) and labels the answer tokens plus the
end-of-turn token that closes the answer (so the model learns to stop); everything else is
``-100``. :class:`SFTCollator` right-pads them (packed rows too) to a multiple of
:data:`LENGTH_MULTIPLE` tokens (:func:`padded_length`); :func:`collate_rows` turns prompt rows
into a dict of lists.

:class:`ResumableDataLoader` shuffles by ``(seed, epoch)`` and records how many batches of the
epoch it has yielded in Lightning checkpoints (Lightning saves ``state_dict()`` of a training
loader that has one), so a run resumed mid-epoch sees the same batches as one never stopped.
Given the items' lengths it groups them as transformers' ``group_by_length`` sampling
(:func:`length_grouped_indices`): batches of similar lengths, so little of a batch is padding,
in an order that is still shuffled by ``(seed, epoch)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from sts_lightning.data.prompts import Example, encode_example

__all__ = [
    "LENGTH_MULTIPLE",
    "ResumableDataLoader",
    "SFTCollator",
    "collate_rows",
    "length_grouped_indices",
    "padded_length",
    "resumable_loader",
    "tokenize_sft",
]

log = logging.getLogger(__name__)

LENGTH_MULTIPLE = 32
"""Batches of bf16 forwards are padded to a multiple of this many tokens.

On CPUs, oneDNN compiles a bf16 matrix-product kernel for each new input shape and keeps it in
a cache of up to 1,024 entries, about 12 MB per sequence length for SmolLM2-135M's train step.
Measured: 40 lengths 40..391 left 470 MB in the heap; padded to 64 they left 70 MB, in about
the same time (266 s against 255 s: the extra tokens cost what fewer compilations save).
Unpadded widths grow the process by hundreds of MB over a run and fragment its heap. Rounding
up to 32 tokens bounds the shapes; right padding is masked, so no result changes beyond bf16
rounding.
"""


def padded_length(longest: int, multiple: int = LENGTH_MULTIPLE) -> int:
    """``longest`` rounded up to a multiple of ``multiple``: a batch's padded width.

    Example:
        >>> padded_length(1), padded_length(32), padded_length(33), padded_length(5, 1)
        (32, 32, 64, 5)
    """
    return -(-longest // multiple) * multiple


def tokenize_sft(
    tokenizer,
    rows: list[dict[str, Any]],
    *,
    max_length: int,
    system_prompt: str | None = None,
    label_end_of_turn: bool = True,
    where: str = "train",
) -> list[dict[str, Any]]:
    """``{"input_ids", "labels", "prompt", "answer"}`` per row; labels: answer ids, else ``-100``.

    Sequences longer than ``max_length`` are cut at the end (the answer's tail is lost); a row
    whose answer starts past ``max_length`` is dropped with a warning.

    Raises:
        ValueError: A row without answer, or ``max_length`` truncating every answer.
    """
    if not rows:
        raise ValueError(f"{where} has no rows")
    special = set(tokenizer.all_special_ids)
    items, dropped, first_answer = [], 0, []
    for i, row in enumerate(rows):
        if row.get("answer") is None:
            raise ValueError(f"row {i} of {where} has no answer: SFT needs (prompt, answer) pairs")
        enc = encode_example(
            tokenizer, Example(row["prompt"], row["answer"]), system_prompt=system_prompt
        )
        ids = enc.input_ids
        start, end = enc.answer_span
        if label_end_of_turn and end < len(ids) and ids[end] in special:
            end += 1  # `<|im_end|>` / `<|eot_id|>`: without it the model never learns to stop
        labels = [-100] * start + ids[start:end] + [-100] * (len(ids) - end)
        first_answer.append(start)
        if start >= max_length:  # the loss is on the answer: nothing of it would remain
            dropped += 1
            continue
        # The text rides along (the collator ignores it) for callbacks that read the dataset.
        item = {"input_ids": ids[:max_length], "labels": labels[:max_length]}
        items.append({**item, "prompt": row["prompt"], "answer": row["answer"]})
    if not items:
        raise ValueError(
            f"`max_length`={max_length} truncates every answer of {where}: answers start at token "
            f"{min(first_answer)} or later; raise `max_length` above {min(first_answer)}"
        )
    if dropped:
        log.warning(
            "%s: %d of %d rows dropped, their answer starts past `max_length`=%d",
            where,
            dropped,
            len(rows),
            max_length,
        )
    return items


@dataclass
class SFTCollator:
    """Right-pads ``{"input_ids", "labels"}`` items into ``(B, T)`` tensors.

    Padded rows get an ``attention_mask``. Packed rows (:func:`~sts_lightning.data.packing.
    pack_sequences`, which carry ``position_ids``) get their ``position_ids`` instead and no
    mask: the model must find the examples from the positions. Their padding has position 0
    (each padding token a sequence of its own, attending to itself only). Padding's label is
    always ``-100``.
    """

    pad_token_id: int
    """Id written in padding positions."""
    pad_to_multiple_of: int = LENGTH_MULTIPLE
    """Batches are padded to a multiple of this many tokens (:data:`LENGTH_MULTIPLE`)."""
    name: str | None = None
    """Added to every batch as ``batch["name"]`` (the validation domain it comes from)."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        packed = {"position_ids" in item for item in items}
        if len(packed) > 1:
            raise ValueError("a batch mixes packed rows (with `position_ids`) and unpacked ones")
        fills = {"input_ids": self.pad_token_id, "labels": -100}
        fills |= {"position_ids": 0} if packed == {True} else {"attention_mask": 0}
        longest = padded_length(max(len(x["input_ids"]) for x in items), self.pad_to_multiple_of)
        batch: dict[str, Any] = {
            key: torch.full((len(items), longest), fill, dtype=torch.long)
            for key, fill in fills.items()
        }
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            for key in fills:
                batch[key][row, :n] = 1 if key == "attention_mask" else torch.tensor(item[key])
        if self.name is not None:
            batch["name"] = self.name
        return batch


def collate_rows(items: list[dict[str, Any]], name: str | None = None) -> dict[str, list[Any]]:
    """Rows → a dict of lists (every key of the first row), plus ``"name"`` when given."""
    batch: dict[str, Any] = {key: [item.get(key) for item in items] for key in items[0]}
    if name is not None:
        batch["name"] = name
    return batch


def length_grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    generator: torch.Generator | None = None,
    mega_batch_mult: int | None = None,
) -> list[int]:
    """A random permutation whose consecutive ``batch_size`` items have similar lengths.

    transformers' ``group_by_length`` (``trainer_pt_utils.get_length_grouped_indices``): the
    shuffled indices are cut into megabatches of ``mega_batch_mult`` batches (default: 50, or
    fewer so that there are at least 4 megabatches), each sorted by decreasing length; the
    longest item overall is swapped to the front, so the first batch is the largest (memory
    errors show at once).

    Args:
        lengths: Length of each item.
        batch_size: Items per batch (all ranks' together in distributed training).
        generator: Source of the permutation.
        mega_batch_mult: Batches per megabatch.

    Returns:
        A permutation of ``range(len(lengths))``.

    Example:
        >>> lengths = [1, 9, 2, 8, 3, 7, 4, 6]
        >>> g = torch.Generator().manual_seed(0)
        >>> order = length_grouped_indices(lengths, 2, g, mega_batch_mult=2)
        >>> [lengths[i] for i in order]  # 2 megabatches of 2 batches, each sorted
        [9, 6, 3, 1, 8, 7, 4, 2]
    """
    if mega_batch_mult is None:
        mega_batch_mult = max(1, min(len(lengths) // (batch_size * 4), 50))
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    size = mega_batch_mult * batch_size
    megabatches = [
        sorted(indices[i : i + size], key=lambda j: lengths[j], reverse=True)
        for i in range(0, len(indices), size)
    ]
    if not megabatches:
        return []
    # Each megabatch starts with its longest item: bring the longest of all to the front.
    longest = max(range(len(megabatches)), key=lambda m: lengths[megabatches[m][0]])
    first, top = megabatches[0], megabatches[longest]
    first[0], top[0] = top[0], first[0]
    return [i for megabatch in megabatches for i in megabatch]


class _ResumableSampler(DistributedSampler):
    """Shuffles by ``(seed, epoch)``; starts ``skip`` items into the epoch once after a resume.

    A ``DistributedSampler`` (one replica when not distributed), so Lightning keeps it as is.
    With ``lengths`` the epoch's permutation is length-grouped for batches of ``batch_size``
    items per rank (:func:`length_grouped_indices` over all ranks' batches together), and each
    rank takes every ``num_replicas``-th item, as ``DistributedSampler`` does: the ranks' k-th
    batches come from the same stretch of sorted items.
    """

    skip: int = 0

    def __init__(
        self,
        dataset,
        *,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, **kwargs)
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"`lengths` has {len(lengths)} items, the dataset {len(dataset)}")
        self.lengths = None if lengths is None else list(lengths)
        self.batch_size = batch_size

    def _epoch_indices(self) -> list[int]:
        if self.lengths is None:
            return list(super().__iter__())
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = length_grouped_indices(
            self.lengths, self.batch_size * self.num_replicas, generator
        )
        # DistributedSampler's padding (repeat the start) or cut, then this rank's share.
        if self.drop_last:
            indices = indices[: self.total_size]
        else:
            padding = self.total_size - len(indices)
            indices += (indices * math.ceil(padding / len(indices)))[:padding]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self):
        indices = self._epoch_indices()
        start, self.skip = self.skip, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is part of Lightning checkpoints."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, _ResumableSampler):
            raise TypeError(f"`sampler` must be a _ResumableSampler, got {type(self.sampler)}")
        self._batches = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self):
        # A generator: runs at the first `next`, after Lightning has called `set_epoch`.
        epoch, done = self._resume or (-1, 0)
        self._resume = None
        self._batches = done if epoch == self.sampler.epoch else 0
        self.sampler.skip = self._batches * self.batch_size
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))


def resumable_loader(
    dataset,
    *,
    batch_size: int,
    seed: int,
    trainer=None,
    lengths: Sequence[int] | None = None,
    **kwargs,
) -> ResumableDataLoader:
    """A shuffled :class:`ResumableDataLoader` over this rank's share of ``dataset``.

    Args:
        dataset: A map-style dataset (a list works).
        batch_size: Items per batch.
        seed: Seed of the per-epoch permutation (the same on every rank).
        trainer: The Lightning trainer (its ``distributed_sampler_kwargs`` give rank and world
            size); ``None``: one process.
        lengths: Each item's length: group batches by length
            (:func:`length_grouped_indices`); ``None``: a plain shuffle.
        **kwargs: Other ``DataLoader`` arguments (``collate_fn``, ``num_workers``...).
    """
    dist = None if trainer is None else trainer.distributed_sampler_kwargs
    sampler = _ResumableSampler(
        dataset,
        lengths=lengths,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        **(dist or {"num_replicas": 1, "rank": 0}),
    )
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)

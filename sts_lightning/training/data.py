"""LightningDataModules: chat-templated SFT batches and GRPO prompt batches.

Data flows source (any TRL dataset format) → rows (:mod:`sts_lightning.data.sources`) → tokens →
batches:

- :class:`SFTDataModule` tokenizes rows in any TRL format (``messages``, prompt/completion,
  ``text``, and (prompt, answer) pairs through the chat template) and labels the tokens that
  carry the loss (:mod:`sts_lightning.data.sft_format`); with ``packing`` it packs them into rows
  of ``max_length`` tokens (:mod:`sts_lightning.data.packing`); with ``group_by_length`` (the
  default) training batches hold sequences of similar lengths, so little of them is padding
  (:func:`~sts_lightning.data.batching.length_grouped_indices`). Validation loaders, one per named
  domain, hold the ``"heldout"`` half of built-in domains
  (:func:`~sts_lightning.data.domains.load_domain`) and/or files.
- :class:`PromptDataModule` yields ``{"prompt": [...], "answer": [...], <column>: [...]}``:
  plain text, or TRL's conversational message lists kept as they are; the GRPO module applies
  the chat template.

Both read their rows through :class:`~sts_lightning.training.data_source.SourceDataModule`.
Training loaders shuffle by ``(seed, epoch)`` and record how far into the epoch they are in
Lightning checkpoints, so a run resumed mid-epoch sees the same batches as one never stopped
(resumed at an epoch's end, the modules settle Lightning's counters first:
:mod:`sts_lightning.training.resume`).
"""

from __future__ import annotations

import functools
from typing import Any

from torch.utils.data import DataLoader

from sts_lightning.config import positive_int
from sts_lightning.data.batching import (
    LENGTH_MULTIPLE,
    ResumableDataLoader,
    SFTCollator,
    collate_rows,
)
from sts_lightning.data.packing import pack_sequences
from sts_lightning.data.prompts import Example
from sts_lightning.data.sft_format import SFTFormat, tokenize_rows
from sts_lightning.training.data_source import SourceDataModule

__all__ = ["PromptDataModule", "SFTDataModule"]


class SFTDataModule(SourceDataModule):
    """SFT batches from rows in any TRL format, labelled where the loss goes; named validation sets.

    Formats (:mod:`sts_lightning.data.sft_format`): ``{prompt_column, answer_column}`` pairs
    through the chat template (loss on the answer), ``{"messages"}`` (loss on every token, or on
    the assistant turns with ``assistant_only_loss``), ``{"prompt", "completion"}`` plain or
    conversational (loss on the completion unless ``completion_only_loss=False``) and
    ``{dataset_text_field}`` (loss on every token). Batches: ``input_ids``, ``labels`` ``(B, T)``
    (right-padded, ``-100`` where no loss) and ``attention_mask``, or with ``packing``
    ``position_ids`` instead (:mod:`sts_lightning.data.packing`); in validation also ``name``
    (the domain).

    Args:
        train: A built-in training set name, a ``.jsonl`` file, a ``datasets`` name / directory /
            file, or a list of :class:`Example` or dicts (see :mod:`sts_lightning.data.sources`).
        train_size: Training rows (a seeded subset; built-in sets need it). ``None``: all.
        train_split: ``datasets`` split of ``train``.
        train_subset: ``datasets`` configuration name of ``train``.
        data_files: ``datasets`` ``data_files`` of ``train``.
        prompt_column: Prompt column of (prompt, answer) pairs (text or a message list).
        answer_column: Answer column of (prompt, answer) pairs.
        val_domains: Built-in domains (their ``"heldout"`` half), one validation loader each.
        val_files: ``{name: .jsonl file}``, one validation loader each.
        val_size: Rows per validation loader (at most).
        val_from_train: Rows held out from ``train`` as a loader named ``"train_heldout"``.
        tokenizer: A tokenizer, or a name/path for ``AutoTokenizer``; ``None``: the trained
            module's ``tokenizer`` (read at ``setup``).
        system_prompt: Pairs: ``None``: the template's default; a string: a system turn.
        max_length: Sequences keep their first ``max_length`` tokens (rows left without a
            trained token are dropped); with ``packing``, the length of a packed row.
        label_end_of_turn: Pairs: also train on the end-of-turn token closing the answer.
        packing: Pack whole examples into rows of ``max_length`` tokens (best-fit decreasing,
            TRL's ``"bfd"``), training and validation alike; the loss sums are unchanged.
        group_by_length: Training batches of similar lengths, as transformers'
            ``train_sampling_strategy="group_by_length"`` (``group_by_length=True`` before
            transformers 5): the epoch's shuffled order is cut into megabatches of 50
            batches (fewer on small sets), each sorted by length, the longest batch first.
            Every row is still seen once per epoch, in an order seeded by ``(seed, epoch)``,
            and a resumed run continues with the same batches. ``False``: a plain shuffle.
        pad_to_multiple_of: Batches are right-padded to a multiple of this many tokens (as
            transformers' collators): a few distinct shapes, so bf16 kernels compiled per shape
            stay few (:data:`~sts_lightning.data.batching.LENGTH_MULTIPLE`); 1: the longest row.
        completion_only_loss: As TRL: loss on the completion (answer) only; ``None``: on
            prompt-completion rows and pairs.
        assistant_only_loss: As TRL: loss on assistant turns only (conversational rows).
        dataset_text_field: Column of language-modeling rows.
        batch_size: Training batch size (per device; packed rows with ``packing``).
        val_batch_size: Validation batch size (default ``batch_size``).
        num_workers: DataLoader workers (tokenizing happens once in ``setup``; 0 is fine).
        seed: Seed of the subsets, the built-in generators and the per-epoch shuffling.
    """

    _keep_format = True

    def __init__(
        self,
        train: str | list[Example] | list[dict[str, Any]] = "arithmetic",
        *,
        train_size: int | None = 512,
        train_split: str = "train",
        train_subset: str | None = None,
        data_files: str | list[str] | None = None,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        val_domains: list[str] | None = None,
        val_files: dict[str, str] | None = None,
        val_size: int = 32,
        val_from_train: int = 0,
        tokenizer: Any = None,
        system_prompt: str | None = None,
        max_length: int = 512,
        label_end_of_turn: bool = True,
        packing: bool = False,
        group_by_length: bool = True,
        pad_to_multiple_of: int = LENGTH_MULTIPLE,
        completion_only_loss: bool | None = None,
        assistant_only_loss: bool = False,
        dataset_text_field: str = "text",
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train, train_size=train_size, train_split=train_split, train_subset=train_subset,
            data_files=data_files, prompt_column=prompt_column, answer_column=answer_column,
            val_domains=val_domains, val_files=val_files, val_size=val_size,
            val_from_train=val_from_train, batch_size=batch_size, val_batch_size=val_batch_size,
            num_workers=num_workers, seed=seed,
        )  # fmt: skip
        self.format = SFTFormat(
            max_length=max_length, completion_only_loss=completion_only_loss,
            assistant_only_loss=assistant_only_loss, dataset_text_field=dataset_text_field,
            prompt_column=prompt_column, answer_column=answer_column, system_prompt=system_prompt,
            label_end_of_turn=label_end_of_turn,
        )  # fmt: skip
        for name, flag in (("packing", packing), ("group_by_length", group_by_length)):
            if not isinstance(flag, bool):
                raise ValueError(f"`{name}` must be a bool, got {flag!r}")
        self.tokenizer, self.packing, self.max_length = tokenizer, packing, max_length
        self.group_by_length = group_by_length
        positive_int("pad_to_multiple_of", pad_to_multiple_of)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.train_dataset: list[dict[str, list[int]]] | None = None
        self.val_datasets: dict[str, list[dict[str, list[int]]]] = {}

    def _resolve_tokenizer(self):
        if self.tokenizer is None:
            if self.trainer is None:
                raise ValueError("`tokenizer` is None and no trainer is attached to take it from")
            self.tokenizer = self.trainer.lightning_module.tokenizer
        elif isinstance(self.tokenizer, str):
            from transformers import AutoTokenizer

            from sts_lightning.model.loading import resolve_model

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.tokenizer))
        if self.tokenizer.pad_token_id is None:
            raise ValueError("`tokenizer` has no pad token: set `tokenizer.pad_token`")
        return self.tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        tokenizer = self._resolve_tokenizer()
        self._read_rows()

        def encode(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
            items = tokenize_rows(tokenizer, rows, self.format, where=where)
            return pack_sequences(items, self.max_length) if self.packing else items

        self.train_dataset = encode(self.train_rows, "`train`")
        self.val_datasets = {
            name: encode(rows, f"validation set {name!r}") for name, rows in self.val_rows.items()
        }

    def _collator(self, name: str | None = None):
        # packed rows too
        return SFTCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of, name=name)

    def train_dataloader(self) -> ResumableDataLoader:
        lengths = None
        if self.group_by_length:
            lengths = [len(item["input_ids"]) for item in self.train_dataset]
        return self._train_loader(self.train_dataset, self._collator(), lengths)

    def val_dataloader(self) -> list[DataLoader]:
        return self._val_loaders(self.val_datasets, self._collator)


class PromptDataModule(SourceDataModule):
    """Batches of prompts for GRPO: ``{"prompt": [str], "answer": [str], <column>: [...]}``.

    ``prompt`` is the user text (no chat template), or, for a conversational dataset, the
    message list as it is (system turns included; as TRL, reward functions then get completions
    as message lists). Every other column of the source comes along (built-in sets add
    ``"task"``, their name, for reward functions). Validation batches, one loader per name as in
    :class:`SFTDataModule`, also carry ``"name"``.

    Args:
        train: A built-in training set name, a ``.jsonl`` file, a ``datasets`` name / directory /
            file, or a list of :class:`Example` or dicts (see :mod:`sts_lightning.data.sources`).
        train_size: Training rows (a seeded subset; built-in sets need it). ``None``: all.
        train_split: ``datasets`` split of ``train``.
        train_subset: ``datasets`` configuration name of ``train``.
        data_files: ``datasets`` ``data_files`` of ``train``.
        prompt_column: Column of the prompt (text or TRL's conversational message list).
        answer_column: Column of the reference answer (default ``answer``, else TRL's
            ``completion``); a row without it is a prompt without answer (TRL's prompt-only
            format: ``prompt`` and, say, ``solution``, which reaches the reward functions by
            its name). ``None``: never read an answer.
        val_domains: Built-in domains (their ``"heldout"`` half), one validation loader each.
        val_files: ``{name: .jsonl file}``, one validation loader each.
        val_size: Rows per validation loader (at most).
        val_from_train: Rows held out from ``train`` as a loader named ``"train_heldout"``.
        batch_size: Prompts per training batch (per device).
        val_batch_size: Validation batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        seed: Seed of the subsets, the built-in generators and the per-epoch shuffling.
    """

    _keep_conversational = True
    _answer_required = False  # TRL's prompt-only format: `prompt` and, say, `solution` load as is

    def setup(self, stage: str | None = None) -> None:
        self._read_rows()

    def train_dataloader(self) -> ResumableDataLoader:
        return self._train_loader(self.train_rows, collate_rows)

    def val_dataloader(self) -> list[DataLoader]:
        return self._val_loaders(
            self.val_rows, lambda name: functools.partial(collate_rows, name=name)
        )

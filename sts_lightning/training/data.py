"""LightningDataModules: chat-templated SFT batches and GRPO prompt batches.

Data flows source (any TRL dataset format) → rows (:mod:`sts_lightning.data.sources`) → tokens →
batches:

- :class:`SFTDataModule` tokenizes each (prompt, answer) pair with the chat template and labels
  the answer tokens only (:func:`~sts_lightning.data.batching.tokenize_sft`). Validation
  loaders, one per named domain, hold the ``"heldout"`` half of built-in domains
  (:func:`~sts_lightning.data.domains.load_domain`) and/or files.
- :class:`PromptDataModule` yields ``{"prompt": [...], "answer": [...], <column>: [...]}``: plain
  text, the GRPO module applies the chat template.

Training loaders shuffle by ``(seed, epoch)`` and record how far into the epoch they are in
Lightning checkpoints, so a run resumed mid-epoch sees the same batches as one never stopped.
Packing several examples into one row is not implemented (on CPU with SDPA it would need a
block-diagonal mask; padding to the longest row of a batch costs little on short examples).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from sts_lightning.config import at_least, non_negative_int, positive_int
from sts_lightning.data.batching import (
    ResumableDataLoader,
    SFTCollator,
    collate_rows,
    resumable_loader,
    tokenize_sft,
)
from sts_lightning.data.domains import TRAINING_SETS, load_domain, load_training_set
from sts_lightning.data.prompts import Example
from sts_lightning.data.sources import is_hf_source, load_rows

__all__ = ["PromptDataModule", "SFTDataModule"]

log = logging.getLogger(__name__)


class _SourceDataModule(LightningDataModule):
    """Reads the training and validation rows; subclasses make loaders (arguments: see
    :class:`PromptDataModule`)."""

    def __init__(
        self,
        train: str | list[Example] | list[dict[str, Any]] = "arithmetic",
        *,
        train_size: int | None = 512,
        train_split: str = "train",
        train_subset: str | None = None,
        data_files: str | list[str] | None = None,
        prompt_column: str = "prompt",
        answer_column: str | None = "answer",
        val_domains: list[str] | None = None,
        val_files: dict[str, str] | None = None,
        val_size: int = 32,
        val_from_train: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        positive_int("batch_size", batch_size)
        positive_int("val_size", val_size)
        non_negative_int("val_from_train", val_from_train)
        names = [*(val_domains or []), *(val_files or {})] + (
            ["train_heldout"] * (val_from_train > 0)
        )
        if len(set(names)) != len(names):
            raise ValueError(
                f"validation names must be unique, got {names} (`val_domains`, `val_files`)"
            )
        self.train, self.train_size = train, train_size
        self.train_split, self.train_subset, self.data_files = train_split, train_subset, data_files
        self.prompt_column, self.answer_column = prompt_column, answer_column
        self.val_domains, self.val_files = list(val_domains or []), dict(val_files or {})
        self.val_size, self.val_from_train = val_size, val_from_train
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        self.train_rows: list[dict[str, Any]] | None = None
        self.val_rows: dict[str, list[dict[str, Any]]] = {}

    def prepare_data(self) -> None:
        # Rank 0 only: download a hub dataset into the HF cache before every rank reads it.
        if is_hf_source(self.train):
            self._read(self.train, None)

    def _read(self, source, size: int | None, *, argument: str = "train", seed: int | None = None):
        # The split / subset / data_files arguments describe `train`, not the validation files.
        is_train = argument == "train"
        return load_rows(
            source,
            size=size,
            seed=self.seed if seed is None else seed,
            split=self.train_split if is_train else "train",
            subset=self.train_subset if is_train else None,
            data_files=self.data_files if is_train else None,
            prompt_column=self.prompt_column,
            answer_column=self.answer_column,
            argument=argument,
        )

    def _read_rows(self) -> None:
        if self.train_rows is not None:
            return
        if self.val_from_train and isinstance(self.train, str) and self.train in TRAINING_SETS:
            # A generator: draw the held-out rows from another seed, minus the training prompts.
            train = self._read(self.train, self.train_size)
            seen = [Example(row["prompt"], row["answer"]) for row in train]
            held = load_training_set(self.train, self.val_from_train, self.seed + 1, exclude=seen)
            heldout = [{"prompt": e.prompt, "answer": e.answer, "task": self.train} for e in held]
        else:
            size = None if self.train_size is None else self.train_size + self.val_from_train
            rows = self._read(self.train, size)
            heldout, train = rows[: self.val_from_train], rows[self.val_from_train :]
            if not train:
                raise ValueError(f"`val_from_train`={self.val_from_train} leaves no training rows")
        self.train_rows = train
        for name in self.val_domains:
            examples = load_domain(name, split="heldout", n=self.val_size, seed=self.seed)
            self.val_rows[name] = [{"prompt": e.prompt, "answer": e.answer} for e in examples]
        for name, path in self.val_files.items():
            self.val_rows[name] = self._read(path, None, argument=f"val_files[{name!r}]")[
                : self.val_size
            ]
        if heldout:
            self.val_rows["train_heldout"] = heldout
        log.info(
            "data: %d training rows; validation %s",
            len(self.train_rows),
            {name: len(rows) for name, rows in self.val_rows.items()},
        )

    def _train_loader(self, dataset, collate_fn) -> ResumableDataLoader:
        return resumable_loader(
            dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            trainer=self.trainer,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
        )

    def _val_loaders(self, datasets: dict[str, list], collate: Callable[[str], Any]):
        """One loader per named validation set; ``collate(name)`` makes its collate function."""
        kwargs = {"batch_size": self.val_batch_size, "num_workers": self.num_workers}
        return [DataLoader(d, collate_fn=collate(name), **kwargs) for name, d in datasets.items()]


class SFTDataModule(_SourceDataModule):
    """Chat-templated (prompt, answer) batches with answer-only labels, and named validation sets.

    Batches: ``input_ids``, ``attention_mask``, ``labels`` ``(B, T)`` (right-padded, ``-100`` off
    the answer) and, in validation, ``name`` (the domain).

    Args:
        train: A built-in training set name, a ``.jsonl`` file, a ``datasets`` name / directory /
            file, or a list of :class:`Example` (see :mod:`sts_lightning.data.sources`).
        train_size: Training rows (a seeded subset; built-in sets need it). ``None``: all.
        train_split: ``datasets`` split of ``train``.
        train_subset: ``datasets`` configuration name of ``train``.
        data_files: ``datasets`` ``data_files`` of ``train``.
        prompt_column: Column of the prompt (text or TRL's conversational message list).
        answer_column: Column of the answer (default ``answer``, else TRL's ``completion``).
        val_domains: Built-in domains (their ``"heldout"`` half), one validation loader each.
        val_files: ``{name: .jsonl file}``, one validation loader each.
        val_size: Rows per validation loader (at most).
        val_from_train: Rows held out from ``train`` as a loader named ``"train_heldout"``.
        tokenizer: A tokenizer, or a name/path for ``AutoTokenizer``; ``None``: the trained
            module's ``tokenizer`` (read at ``setup``).
        system_prompt: ``None``: the chat template's default; a string: an explicit system turn.
        max_length: Sequences are cut to this many tokens.
        label_end_of_turn: Also train on the end-of-turn token closing the answer.
        batch_size: Training batch size (per device).
        val_batch_size: Validation batch size (default ``batch_size``).
        num_workers: DataLoader workers (tokenizing happens once in ``setup``; 0 is fine).
        seed: Seed of the subsets, the built-in generators and the per-epoch shuffling.
    """

    def __init__(
        self,
        train: str | list[Example] = "arithmetic",
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
        positive_int("max_length", max_length)
        at_least("max_length", max_length, 2)
        self.tokenizer = tokenizer
        self.system_prompt, self.max_length = system_prompt, max_length
        self.label_end_of_turn = label_end_of_turn
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
        encode = dict(
            max_length=self.max_length,
            system_prompt=self.system_prompt,
            label_end_of_turn=self.label_end_of_turn,
        )
        self.train_dataset = tokenize_sft(tokenizer, self.train_rows, where="`train`", **encode)
        self.val_datasets = {
            name: tokenize_sft(tokenizer, rows, where=f"validation set {name!r}", **encode)
            for name, rows in self.val_rows.items()
        }

    def train_dataloader(self) -> ResumableDataLoader:
        return self._train_loader(self.train_dataset, SFTCollator(self.tokenizer.pad_token_id))

    def val_dataloader(self) -> list[DataLoader]:
        pad = self.tokenizer.pad_token_id
        return self._val_loaders(self.val_datasets, lambda name: SFTCollator(pad, name=name))


class PromptDataModule(_SourceDataModule):
    """Batches of prompts for GRPO: ``{"prompt": [str], "answer": [str], <column>: [...]}``.

    ``prompt`` is the user text (no chat template); every other column of the source comes along
    (built-in sets add ``"task"``, their name, for reward functions). Validation batches, one
    loader per name as in :class:`SFTDataModule`, also carry ``"name"``.

    Args:
        train: A built-in training set name, a ``.jsonl`` file, a ``datasets`` name / directory /
            file, or a list of :class:`Example` or dicts (see :mod:`sts_lightning.data.sources`).
        train_size: Training rows (a seeded subset; built-in sets need it). ``None``: all.
        train_split: ``datasets`` split of ``train``.
        train_subset: ``datasets`` configuration name of ``train``.
        data_files: ``datasets`` ``data_files`` of ``train``.
        prompt_column: Column of the prompt (text or TRL's conversational message list).
        answer_column: Column of the reference answer (default ``answer``, else TRL's
            ``completion``); ``None`` for prompts without one.
        val_domains: Built-in domains (their ``"heldout"`` half), one validation loader each.
        val_files: ``{name: .jsonl file}``, one validation loader each.
        val_size: Rows per validation loader (at most).
        val_from_train: Rows held out from ``train`` as a loader named ``"train_heldout"``.
        batch_size: Prompts per training batch (per device).
        val_batch_size: Validation batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        seed: Seed of the subsets, the built-in generators and the per-epoch shuffling.
    """

    def setup(self, stage: str | None = None) -> None:
        self._read_rows()

    def train_dataloader(self) -> ResumableDataLoader:
        return self._train_loader(self.train_rows, collate_rows)

    def val_dataloader(self) -> list[DataLoader]:
        return self._val_loaders(
            self.val_rows, lambda name: functools.partial(collate_rows, name=name)
        )

"""Where both data modules get their rows: the training source and the named validation sets.

:class:`SourceDataModule` reads the training rows (:func:`~sts_lightning.data.sources.load_rows`),
holds some out as the ``"train_heldout"`` validation set when asked (a built-in generator draws
them from another seed, minus the training prompts), adds the ``"heldout"`` half of built-in
domains and validation files, and makes the loaders: a resumable shuffled one for training
(:func:`~sts_lightning.data.batching.resumable_loader`), one per named validation set.
Subclasses (:mod:`sts_lightning.training.data`) turn rows into batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from sts_lightning.config import non_negative_int, positive_int
from sts_lightning.data.batching import ResumableDataLoader, resumable_loader
from sts_lightning.data.domains import TRAINING_SETS, load_domain, load_training_set
from sts_lightning.data.prompts import Example
from sts_lightning.data.sources import is_hf_source, load_rows

__all__ = ["SourceDataModule"]

log = logging.getLogger(__name__)


class SourceDataModule(LightningDataModule):
    """Reads the training and validation rows; subclasses make batches (arguments: see
    :class:`~sts_lightning.training.data.PromptDataModule`)."""

    _keep_format = False  # rows as read (SFT), not {"prompt", "answer"} (GRPO)
    _keep_conversational = False  # conversational prompts as message lists (GRPO), not text
    _answer_required = True  # a row without `answer_column` is an error, not a bare prompt

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
        rows = load_rows(
            source,
            size=size,
            seed=self.seed if seed is None else seed,
            split=self.train_split if is_train else "train",
            subset=self.train_subset if is_train else None,
            data_files=self.data_files if is_train else None,
            prompt_column=self.prompt_column,
            answer_column=self.answer_column,
            argument=argument,
            keep_format=self._keep_format,
            keep_conversational=self._keep_conversational,
            answer_required=self._answer_required,
        )
        # A batch's first prompt tells GRPO whether completions are text or messages.
        if len({isinstance(row.get("prompt"), list) for row in rows}) > 1:
            raise ValueError(f"`{argument}` mixes plain and conversational prompts: use one kind")
        return rows

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

    def _train_loader(self, dataset, collate_fn, lengths=None) -> ResumableDataLoader:
        """The shuffled training loader; batches grouped by ``lengths`` (one per item) if given."""
        return resumable_loader(
            dataset,
            batch_size=self.batch_size,
            seed=self.seed,
            trainer=self.trainer,
            lengths=lengths,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
        )

    def _val_loaders(self, datasets: dict[str, list], collate: Callable[[str], Any]):
        """One loader per named validation set; ``collate(name)`` makes its collate function."""
        kwargs = {"batch_size": self.val_batch_size, "num_workers": self.num_workers}
        return [DataLoader(d, collate_fn=collate(name), **kwargs) for name, d in datasets.items()]

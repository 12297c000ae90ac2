"""Packing: several tokenized examples per row of ``max_length`` tokens, kept apart by positions.

:func:`pack_sequences` bins the examples best-fit decreasing, as TRL's default
``packing_strategy="bfd"`` (each example whole, longest first, into the fullest row it still
fits). Each packed row carries ``position_ids`` that restart at 0 at every example, and
:class:`~sts_lightning.data.batching.SFTCollator` batches them without ``attention_mask``:
transformers then reads the example boundaries from ``position_ids``
(``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask (eager,
SDPA, flex attention); flash attention reads them from one row only (``_is_packed_sequence``),
so :func:`~sts_lightning.monitor.teacher_forcing.scored_logits` joins the rows of a batch for
it. Passing an ``attention_mask`` would turn the detection off and
let each example attend to the ones before it.

Labels are unshifted (``labels[t]`` is predicted from position ``t - 1``), so the first label of
every packed example is set to ``-100``: otherwise the last token of one example would be
trained to predict the first of the next. An example's own first token is never predicted
unpacked either, so packed and unpacked rows carry the same loss, token for token.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from sts_lightning.config import positive_int
from sts_lightning.data.row_reader import ROW_COLUMNS

__all__ = ["pack_sequences"]


def _bins(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: indices of ``lengths`` per bin of capacity ``max_length``."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted: bisect finds best fit
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties keep order
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k == len(free):
            bins.append([i])
            bisect.insort(free, (max_length - lengths[i], len(bins) - 1))
        else:
            space, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (space - lengths[i], b))
    return bins


def pack_sequences(items: Sequence[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Rows of up to ``max_length`` tokens, each holding whole examples, best-fit decreasing.

    Args:
        items: ``{"input_ids", "labels", "prompt"?, "answer"?}`` examples of at most
            ``max_length`` tokens each (truncate first).
        max_length: Tokens per packed row at most.

    Returns:
        ``{"input_ids", "labels", "position_ids", "seq_lengths"}`` per row (``position_ids``
        restart at 0 at each example, whose first label becomes ``-100``), and ``examples``:
        the ``{"prompt", "answer"?}`` (or other :data:`~sts_lightning.data.row_reader.ROW_COLUMNS`)
        of its examples that have them (for callbacks that read training examples from the
        dataset).

    Raises:
        ValueError: An example longer than ``max_length``.

    Example:
        >>> rows = pack_sequences([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]},
        ...                        {"input_ids": [4, 5], "labels": [-100, 5]},
        ...                        {"input_ids": [6], "labels": [6]}], max_length=4)
        >>> [(r["input_ids"], r["labels"], r["position_ids"]) for r in rows]
        [([1, 2, 3, 6], [-100, 2, 3, -100], [0, 1, 2, 0]), ([4, 5], [-100, 5], [0, 1])]
    """
    positive_int("max_length", max_length)
    lengths = [len(item["input_ids"]) for item in items]
    if lengths and max(lengths) > max_length:
        raise ValueError(
            f"an example has {max(lengths)} tokens, more than `max_length`={max_length}: "
            "truncate before packing"
        )
    rows = []
    for members in _bins(lengths, max_length):
        row: dict[str, Any] = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
        for i in members:
            row["input_ids"] += items[i]["input_ids"]
            row["labels"] += [-100, *items[i]["labels"][1:]]  # nothing predicts a first token
            row["position_ids"] += range(lengths[i])
            row["seq_lengths"].append(lengths[i])
            text = {k: items[i][k] for k in ROW_COLUMNS if k in items[i]}
            if text:
                row.setdefault("examples", []).append(text)
        rows.append(row)
    return rows

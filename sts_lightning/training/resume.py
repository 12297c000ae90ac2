"""Resume from a checkpoint saved after an epoch's last batch as from one saved at that batch.

Lightning 2.6 saves the fit loop's progress counters in every checkpoint. Saved at the end of a
batch (``ModelCheckpoint(every_n_train_steps=...)``) they resume exactly: the next batch, or
the next epoch from its first batch. Two other places leave counters that a run with
``max_steps`` (always "restarting" for Lightning) resumes wrongly:

- ``on_train_epoch_end`` (``ModelCheckpoint``'s default, ``every_n_epochs``): the epoch is
  counted ``processed`` but not ``completed``. The restored run sets the sampler epoch to
  ``processed``, then counts the epoch processed once more when it "finishes" it: every later
  epoch shuffles with the next epoch's seed, and without validation one extra batch is drawn
  as the restored epoch's last (its ``batch_idx`` past the end).
- after the epoch loop returned (``trainer.save_checkpoint`` after ``fit``, a ``should_stop``):
  the epoch is counted done but the batch counter still holds its batches, so the resumed epoch
  is cut short by that many batches.

:func:`settle_epoch_end` rewrites both into the counters of the last batch's
``on_train_batch_end``, which Lightning resumes as an uninterrupted run continues (the epoch-end
hooks have run already; the data loader's own position is unchanged).
"""

from __future__ import annotations

from typing import Any

__all__ = ["settle_epoch_end"]


def settle_epoch_end(checkpoint: dict[str, Any], accumulate_grad_batches: int = 1) -> bool:
    """Rewrite a checkpoint saved after an epoch's last batch as saved at that batch's end.

    Args:
        checkpoint: A Lightning checkpoint dict (changed in place); one without a fit loop
            state, or saved at a batch's end, is left as it is.
        accumulate_grad_batches: The trainer's, to tell whether that batch stepped the
            optimizer (Lightning counts ``_batches_that_stepped`` again when it did).

    Returns:
        Whether the counters were rewritten.

    Example:
        >>> done = {"ready": 3, "started": 3, "processed": 3, "completed": 3}
        >>> epoch = {"ready": 1, "started": 1, "processed": 1, "completed": 0}
        >>> fit = {"epoch_progress": {"total": dict(epoch), "current": dict(epoch)},
        ...        "epoch_loop.batch_progress": {"total": dict(done), "current": dict(done),
        ...                                      "is_last_batch": True},
        ...        "epoch_loop.state_dict": {"_batches_that_stepped": 3}}
        >>> settle_epoch_end({"loops": {"fit_loop": fit}})
        True
        >>> fit["epoch_progress"]["current"]["processed"], fit["epoch_loop.state_dict"]
        (0, {'_batches_that_stepped': 2})
    """
    fit = (checkpoint.get("loops") or {}).get("fit_loop")
    if not fit or "epoch_progress" not in fit or "epoch_loop.batch_progress" not in fit:
        return False
    epochs, batches = fit["epoch_progress"], fit["epoch_loop.batch_progress"]
    epoch, batch = epochs["current"], batches["current"]
    batch_ended = batch["ready"] == batch["started"] == batch["processed"] == batch["completed"] > 0
    epoch_ended = epoch["ready"] == epoch["started"] == epoch["processed"] > 0
    after_loop = epoch["completed"] == epoch["processed"]
    if not (
        batch_ended and epoch_ended and (after_loop or epoch["completed"] == epoch["processed"] - 1)
    ):
        return False
    for counts in (epochs["total"], epochs["current"]):
        counts["processed"] -= 1
        counts["completed"] -= int(after_loop)
    for counts in (batches["total"], batches["current"]):
        counts["completed"] -= 1
    # Lightning adds the batch to `_batches_that_stepped` (the loggers' step) after the batch
    # end, and again on resume when that batch stepped the optimizer: take it back here.
    stepped = batches.get("is_last_batch") or batch["ready"] % accumulate_grad_batches == 0
    state = fit.get("epoch_loop.state_dict") or {}
    if stepped and "_batches_that_stepped" in state:
        state["_batches_that_stepped"] -= 1
    return True

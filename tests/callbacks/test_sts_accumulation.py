"""STSCallback with gradient accumulation and with Lightning's monitor-driven callbacks."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from tests.callbacks.test_sts import TEXTS, UserModule, _callback, _csv, _loader

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(tmp_path, model, tokenizer, callbacks, texts, **trainer_kwargs):
    trainer = Trainer(
        callbacks=callbacks, logger=CSVLogger(tmp_path), enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
        **trainer_kwargs,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|fewer than).*")
        trainer.fit(UserModule(copy.deepcopy(model).train(), tokenizer), _loader(tokenizer, texts))
    return trainer


def test_accumulation_measures_once_per_optimizer_step(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch
):
    from sts_lightning.monitor.tracker import STSTracker

    calls, real = [], STSTracker.measure
    monkeypatch.setattr(
        STSTracker, "measure", lambda self, m, t, step: calls.append(step) or real(self, m, t, step)
    )
    callback = _callback(tiny_sae, every=1)
    trainer = _run(
        tmp_path, tiny_llama, tiny_tokenizer, [callback], TEXTS["arith"] * 4,
        max_steps=3, accumulate_grad_batches=4,
    )  # fmt: skip
    assert trainer.global_step == 3 and trainer.fit_loop.total_batch_idx == 11  # 12 batches
    assert calls == [1, 2, 3]  # one measurement per optimizer step, not per micro-batch
    assert [h["step"] for h in callback.tracker.history] == [1.0, 2.0, 3.0]
    logged = [int(r["step"]) for r in _csv(trainer) if r.get("sts/shift/total")]
    assert logged == [1, 2, 3]


def test_every_n_steps_counts_optimizer_steps_under_accumulation(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    callback = _callback(tiny_sae, every=2)
    _run(
        tmp_path, tiny_llama, tiny_tokenizer, [callback], TEXTS["arith"] * 4,
        max_steps=5, accumulate_grad_batches=2,
    )  # fmt: skip
    assert [h["step"] for h in callback.tracker.history] == [2.0, 4.0, 5.0]  # 5: train end


def test_early_stopping_on_a_realised_delta_stops_the_run(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    # 2 batches per epoch, a measurement per step. The delta must rise by 1e6 nats to count as
    # an improvement: it never does, so with patience 1 the run stops after its second epoch.
    callback = _callback(tiny_sae, every=1)
    stopper = EarlyStopping(
        monitor="sts/delta/law", mode="max", min_delta=1e6, patience=1,
        check_on_train_epoch_end=True,
    )  # fmt: skip
    trainer = _run(
        tmp_path, tiny_llama, tiny_tokenizer, [callback, stopper], TEXTS["arith"][:8],
        max_epochs=6,
    )  # fmt: skip
    assert trainer.should_stop and stopper.stopped_epoch == 1
    assert trainer.global_step == 4  # of 12 without early stopping
    law = {h["step"]: h["sts/delta/law"] for h in callback.tracker.history}
    assert float(stopper.best_score) == pytest.approx(law[2.0])  # the value at epoch 0's end


def test_model_checkpoint_monitors_a_tracked_metric(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    callback = _callback(tiny_sae, every=1)
    best = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="sts/shift/total", mode="max", save_top_k=1,
        every_n_train_steps=1,
    )  # fmt: skip
    _run(tmp_path, tiny_llama, tiny_tokenizer, [callback, best], TEXTS["arith"], max_steps=4)
    totals = {h["step"]: h["sts/shift/total"] for h in callback.tracker.history}
    step = max(totals, key=totals.get)
    assert float(best.best_model_score) == pytest.approx(totals[step])
    assert f"step={int(step)}" in best.best_model_path
    assert torch.load(best.best_model_path, weights_only=False)["global_step"] == step


class TwoStepsPerBatch(UserModule):
    """Manual optimisation with two optimizer steps per batch: global_step jumps by 2."""

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        for _ in range(2):
            loss = self.model(**batch).loss
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()


def test_a_step_that_jumps_past_a_multiple_still_measures(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    callback = _callback(tiny_sae, every=3)
    trainer = Trainer(
        callbacks=[callback], logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, accelerator="cpu", max_steps=6, default_root_dir=tmp_path,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = TwoStepsPerBatch(copy.deepcopy(tiny_llama).train(), tiny_tokenizer)
        trainer.fit(module, _loader(tiny_tokenizer, TEXTS["arith"]))
    assert trainer.global_step == 6
    assert [h["step"] for h in callback.tracker.history] == [4.0, 6.0]  # 3 was passed over at 4

"""Injected faults: full disks, failing monitoring, interrupted training and cache builds.

Training survives every monitoring fault; the fault is reported once and monitoring stops for
the rest of the run, in both callbacks (one policy: ``sts_lightning.monitor.guard``), while a
misconfiguration found before step 1 raises; a write that fails
leaves the previous file (or nothing), never a partial one; an interrupted run leaves a usable
checkpoint. A logger that raises in ``log_metrics`` is in tests/callbacks/test_sts.py
(test_broken_logger_does_not_stop_training_and_is_reported_once); interrupted embedded-model
rebuilds are in tests/model/test_embedded.py.
"""

from __future__ import annotations

import errno
import signal

import pytest
import torch

from sts_lightning.callbacks import STSCallback
from sts_lightning.data.prompts import Example
from sts_lightning.forecast import prediction as prediction_module
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.monitor import state as state_module
from sts_lightning.monitor.state import load_tracker_state, save_tracker_state
from sts_lightning.monitor.tracker import TrackerConfig
from sts_lightning.stats import LatentMoments
from tests.callbacks.test_sts import TEXTS, _fit

# Width-32 models: one thread is fastest, and immune to a busy second core.
pytestmark = pytest.mark.usefixtures("one_thread")


def _callback(sae, every=2, **kwargs):
    """STSCallback on small budgets: the faults, not the statistics, are under test."""
    return STSCallback(
        sae,
        domains=TEXTS,
        train_examples=[Example(t) for t in TEXTS["arith"]],
        k=8,
        every_n_steps=every,
        predict_config=PredictConfig(
            domain_demos=0, train_tokens=60, domain_tokens=60, batch_size=16, progress=False
        ),
        tracker_config=TrackerConfig(probe_tokens=60, eval_tokens=40),
        **kwargs,
    )


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _fit_warned(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=4):
    with pytest.warns(UserWarning, match="STSCallback: ") as record:
        trainer, _ = _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=max_steps)
    reports = [str(w.message) for w in record if "STSCallback: " in str(w.message)]
    return trainer, reports


# ----------------------------------------------------------------------------- full disk
def test_full_disk_while_writing_the_report(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch
):
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", _enospc)
    callback = _callback(tiny_sae, every=2)
    trainer, reports = _fit_warned(tmp_path, tiny_llama, tiny_tokenizer, callback)
    assert trainer.global_step == 4 and [h["step"] for h in callback.tracker.history] == [2, 4]
    assert len(reports) == 1 and "report failed" in reports[0] and "No space left" in reports[0]


def test_full_disk_while_saving_the_forecast(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch
):
    monkeypatch.setattr(prediction_module, "save_file", _enospc)
    callback = _callback(tiny_sae, every=2)
    trainer, reports = _fit_warned(tmp_path, tiny_llama, tiny_tokenizer, callback)
    assert trainer.global_step == 4  # training went on without monitoring
    assert len(reports) == 1 and "forecast failed" in reports[0]
    forecast = tmp_path / "lightning_logs" / "version_0" / "sts" / "forecast"
    assert not forecast.exists() or not any(forecast.iterdir())  # nothing partial


def test_full_disk_keeps_the_previous_statistics_file(tmp_path, monkeypatch):
    path = tmp_path / "moments.safetensors"
    old = LatentMoments(4)
    old.update(torch.ones(2, 4))
    old.save(path)
    new = LatentMoments(4)
    new.update(torch.full((3, 4), 5.0))
    from sts_lightning import stats

    monkeypatch.setattr(stats, "save_file", _enospc)
    with pytest.raises(OSError, match="No space left"):
        new.save(path)
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    assert torch.equal(LatentMoments.load(path).compute()["mean"], old.compute()["mean"])


def test_full_disk_keeps_the_previous_tracker_state(tmp_path, monkeypatch):
    save_tracker_state({"history": [{"step": 1.0}], "rows": torch.ones(3)}, tmp_path)
    real_dumps = state_module.json.dumps
    monkeypatch.setattr(state_module.json, "dumps", _enospc)
    with pytest.raises(OSError, match="No space left"):
        save_tracker_state({"history": [{"step": 2.0}], "rows": torch.zeros(3)}, tmp_path)
    monkeypatch.setattr(state_module.json, "dumps", real_dumps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tracker.json", "tracker.safetensors"]
    state = load_tracker_state(tmp_path)
    assert state["history"] == [{"step": 1.0}] and torch.equal(state["rows"], torch.ones(3))


# ----------------------------------------------------------------------------- SAE cache
def _sae_cfg():
    from sts_lightning.model.sae_training import SAETrainConfig

    return SAETrainConfig(
        d_sae=16, k=2, batch_size=32, training_tokens=32 * 12, lr_warm_up_steps=1,
        lr_decay_steps=2, n_eval_rows=50, eval_every=4,
    )  # fmt: skip


ROWS = torch.randn(600, 8, generator=torch.Generator().manual_seed(0)) + 1.0


@pytest.mark.parametrize("fault", ["full-disk-on-save", "interrupt-mid-training"])
def test_interrupted_sae_build_leaves_no_cache_entry(tmp_path, monkeypatch, fault):
    import sae_lens

    from sts_lightning.model.sae_training import sae_cache_path, train_sae

    kwargs = dict(cfg=_sae_cfg(), d_in=8, cache_dir=tmp_path, cache_key="k")
    with monkeypatch.context() as patch:
        if fault == "full-disk-on-save":
            patch.setattr(sae_lens.TopKTrainingSAE, "save_inference_model", _enospc)
            expected, on_eval = OSError, None
        else:

            def on_eval(record):  # Ctrl-C between two training steps
                if record["step"] >= 4:
                    raise KeyboardInterrupt

            expected = KeyboardInterrupt
        with pytest.raises(expected):
            train_sae(ROWS, on_eval=on_eval, **kwargs)
    assert list(tmp_path.iterdir()) == []  # no entry, no temp dir: nothing to mistake for a SAE
    sae = train_sae(ROWS, **kwargs)  # the next run builds it
    assert (sae_cache_path(tmp_path, "k", _sae_cfg(), 8) / "sae_weights.safetensors").is_file()
    assert sae.W_enc.shape == (8, 16)


# ----------------------------------------------------------------------------- monitoring
@pytest.mark.parametrize("fault", ["sae-raises", "weights-become-nan", "evaluator-raises"])
def test_training_survives_a_failing_measurement(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, fault
):
    import copy

    from lightning.pytorch import Callback

    sae, kwargs, calls = copy.deepcopy(tiny_sae), {}, []

    class Diverge(Callback):  # the fault strikes after the first measurement (step 2)
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 3 and fault == "weights-become-nan":
                with torch.no_grad():
                    pl_module.model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
            if trainer.global_step == 3 and fault == "sae-raises":
                sae.encode = lambda x: (_ for _ in ()).throw(RuntimeError("SAE on a dead GPU"))

    def evaluator(model, tokenizer):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("benchmark server down")
        return {"arith": 1.0, "law": 2.0, "bio": 3.0}

    if fault == "evaluator-raises":
        kwargs["evaluator"] = evaluator
    callback = _callback(sae, every=2, **kwargs)
    with pytest.warns(UserWarning, match="STSCallback: ") as record:
        trainer = _fit_with(tmp_path, tiny_llama, tiny_tokenizer, callback, Diverge())
    reports = [str(w.message) for w in record if "STSCallback: " in str(w.message)]
    assert trainer.global_step == 4  # monitoring never ends training
    assert len(reports) == 1 and "measure failed" in reports[0]  # reported once...
    assert "off for the rest of this run" in reports[0]  # ...saying what happens next
    assert [h["step"] for h in callback.tracker.history] == [2.0]  # no measurement after it
    assert not list(tmp_path.rglob("realised_shift.png"))  # nor a report at the end


@pytest.mark.parametrize("fault", ["sae-raises", "evaluator-raises"])
def test_hf_training_survives_a_failing_measurement_under_the_same_policy(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, fault
):
    import copy

    from transformers import TrainerCallback

    from tests.callbacks.test_hf import _attach, _trainer

    sae, kwargs, calls = copy.deepcopy(tiny_sae), {}, []

    class Fault(TrainerCallback):  # runs before the STS callback: strikes at step 4's measure
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3 and fault == "sae-raises":
                sae.encode = lambda x: (_ for _ in ()).throw(RuntimeError("SAE on a dead GPU"))

    def evaluator(model, tokenizer):  # step 0, step 2, then the server goes down
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("benchmark server down")
        return {"arith": 1.0 + 0.5 * (len(calls) - 1), "law": 2.0, "bio": 3.0}

    if fault == "evaluator-raises":
        kwargs["evaluator"] = evaluator
    trainer = _trainer(
        tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=6,
        callbacks=[Fault()],
    )  # fmt: skip
    callback = _attach(trainer, sae, every_n_steps=2, **kwargs)
    with pytest.warns(UserWarning, match="STSTrainerCallback: ") as record:
        trainer.train()
    reports = [str(w.message) for w in record if "STSTrainerCallback: " in str(w.message)]
    assert trainer.state.global_step == 6  # monitoring never ends training
    assert len(reports) == 1 and "measure failed" in reports[0]
    assert "off for the rest of this run" in reports[0]
    logged = [h["step"] for h in trainer.state.log_history if "sts/shift/total" in h]
    assert logged == [2] and [h["step"] for h in callback.tracker.history] == [2.0]
    if fault == "evaluator-raises":  # the evaluator's change from step 0 replaced the deltas
        at_2 = next(h for h in trainer.state.log_history if "sts/delta/arith" in h)
        assert (at_2["sts/delta/arith"], at_2["sts/delta/law"]) == (0.5, 0.0)


def test_hf_misconfiguration_before_step_one_raises(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    import copy

    from tests.callbacks.test_hf import _attach, _train, _trainer

    trainer = _trainer(tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=2)
    _attach(trainer, tiny_sae, domains=["no-such-domain", "law", "code"])
    with pytest.raises((ValueError, KeyError), match="no-such-domain"):
        _train(trainer)
    assert trainer.state.global_step == 0


def _fit_with(tmp_path, tiny_llama, tiny_tokenizer, callback, extra):
    import copy
    import warnings

    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from tests.callbacks.test_sts import UserModule, _loader

    trainer = Trainer(
        max_steps=4, callbacks=[callback, extra], logger=CSVLogger(tmp_path),
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        enable_checkpointing=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|fewer than).*")
        trainer.fit(
            UserModule(copy.deepcopy(tiny_llama).train(), tiny_tokenizer),
            _loader(tiny_tokenizer, TEXTS["arith"] * 4),
        )
    return trainer


# ----------------------------------------------------------------------------- Ctrl-C
def test_keyboard_interrupt_mid_fit_leaves_a_usable_checkpoint(
    tmp_path, tiny_llama, tiny_tokenizer
):
    from lightning.pytorch import Callback, Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.training.sft import SFTModule

    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    examples = [Example(f"What is {i} + {i}?", f"The answer is {2 * i}.") for i in range(12)]

    class CtrlC(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                raise KeyboardInterrupt

    def run(max_steps, callbacks=(), ckpt_path=None):
        seed_everything(0)
        module = SFTModule(str(tmp_path / "model"), learning_rate=3e-3)
        trainer = Trainer(
            accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path, callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks),
        )  # fmt: skip
        data = SFTDataModule(examples, train_size=None, batch_size=5, max_length=64, seed=0)
        trainer.fit(module, data, ckpt_path=ckpt_path)
        return module

    previous = signal.getsignal(signal.SIGINT)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=1)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown on Ctrl-C
            run(6, callbacks=[ckpt, CtrlC()])
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores SIGINT while shutting down
    # ModelCheckpoint runs after the other callbacks: step 3 was interrupted before its save.
    last = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"  # mid-epoch: 3 batches per epoch
    assert torch.load(last, weights_only=True)["global_step"] == 2  # complete, safe to load
    resumed = run(6, ckpt_path=last)
    uninterrupted = run(6)
    for (name, a), b in zip(resumed.named_parameters(), uninterrupted.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

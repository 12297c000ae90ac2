"""STSCallback in a user's own Lightning script, on a tiny model, read back from a CSVLogger."""

from __future__ import annotations

import copy
import csv
import warnings

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from sts_lightning.callbacks import STSCallback
from sts_lightning.data.prompts import Example, encode_example
from sts_lightning.forecast import predict as predict_module
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.monitor.tracker import TrackerConfig

# Three domains with disjoint vocabularies; training uses the first one's texts only.
TEXTS = {
    "arith": [f"What is {a} + {b}? The answer is {a + b}." for a in range(5) for b in range(4)],
    "law": [
        f"The court held that contract {i} was void for lack of consideration." for i in range(20)
    ],
    "bio": [
        f"Photosynthesis converts light energy into chemical energy in plants {i}."
        for i in range(20)
    ],
}


class UserModule(LightningModule):
    """What a user writes around an HF model: nothing sts_lightning-specific."""

    def __init__(self, model, tokenizer, lr=3e-2):
        super().__init__()
        self.model, self.tokenizer, self.lr = model, tokenizer, lr

    def training_step(self, batch, batch_idx):
        out = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        self.log("train/loss", out.loss)
        return out.loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr)


def _loader(tokenizer, texts, batch_size=4):
    encoded = [encode_example(tokenizer, Example(t)).input_ids for t in texts]

    def collate(items):
        width = max(len(x) for x in items)
        ids = torch.full((len(items), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(items):
            ids[i, : len(x)], mask[i, : len(x)] = torch.tensor(x), 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100),
        }

    return DataLoader(encoded, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _callback(tiny_sae, every=4, **kwargs):
    return STSCallback(
        tiny_sae,
        domains=TEXTS,
        train_examples=[Example(t) for t in TEXTS["arith"]],
        k=8,
        every_n_steps=every,
        predict_config=PredictConfig(
            domain_demos=1, train_tokens=200, domain_tokens=200, progress=False
        ),
        tracker_config=TrackerConfig(probe_tokens=200, eval_tokens=100),
        **kwargs,
    )


def _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=8, logger=None, **kwargs):
    module = UserModule(copy.deepcopy(tiny_llama).train(), tiny_tokenizer)
    trainer = Trainer(
        max_steps=max_steps,
        callbacks=[callback],
        logger=logger or CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|fewer than).*")
        trainer.fit(module, _loader(tiny_tokenizer, TEXTS["arith"] * 4))
    return trainer, module


def _csv(trainer) -> list[dict]:
    with open(f"{trainer.logger.log_dir}/metrics.csv") as f:
        return list(csv.DictReader(f))


def test_one_line_callback_logs_forecast_shift_and_correlation(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    trainer, _ = _fit(tmp_path, tiny_llama, tiny_tokenizer, _callback(tiny_sae))
    rows = _csv(trainer)
    keys = set().union(*rows)
    for key in (
        "sts/pred/act/law",
        "sts/pred/icl/bio",
        "sts/shift/overlap@8",
        "sts/shift/total",
        "sts/realised/arith",
        "sts/delta/law",
        "sts/corr/pearson",
        "sts/shift/spearman",
    ):
        assert key in keys, key
    measured = [r for r in rows if r.get("sts/shift/total")]
    assert [int(r["step"]) for r in measured] == [4, 8]
    assert all(float(r["sts/shift/total"]) > 0 for r in measured)
    assert (
        tmp_path / "lightning_logs" / "version_0" / "sts" / "forecast" / "prediction.json"
    ).exists()
    assert (tmp_path / "lightning_logs" / "version_0" / "sts" / "realised_shift.png").exists()


def test_shift_is_zero_at_step_zero_and_trained_domain_rises(
    tiny_llama, tiny_tokenizer, tiny_sae, tmp_path
):
    callback = _callback(tiny_sae, every=100)
    _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=1)
    tracker = callback.tracker
    # The base model against itself: exactly no shift.
    fresh = copy.deepcopy(tiny_llama)
    rows = tracker._probe_rows(fresh, tiny_tokenizer, tracker.probe)
    tracker.probe["rows"] = rows[tracker.probe["keep"]]
    at_zero, _ = tracker.measure(fresh, tiny_tokenizer, step=0)
    assert at_zero["sts/shift/total"] == 0.0
    # Training on arithmetic moves the latents arithmetic uses more than those of other domains.
    _trainer, _module = _fit(
        tmp_path, tiny_llama, tiny_tokenizer, callback2 := _callback(tiny_sae), max_steps=8
    )
    last = callback2.tracker.history[-1]
    assert last["sts/realised/arith"] > max(last["sts/realised/law"], last["sts/realised/bio"])
    assert last["sts/delta/arith"] < 0  # its held-out loss fell


def test_resume_restores_state_without_recomputing_forecast(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch
):
    first = _callback(tiny_sae)
    trainer, _ = _fit(tmp_path / "a", tiny_llama, tiny_tokenizer, first, max_steps=4)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = first.state_dict()

    calls = []
    real_predict = predict_module.predict
    monkeypatch.setattr(
        predict_module, "predict", lambda *a, **k: calls.append(1) or real_predict(*a, **k)
    )
    second = _callback(tiny_sae)
    module = UserModule(copy.deepcopy(tiny_llama).train(), tiny_tokenizer)
    trainer2 = Trainer(
        max_steps=8,
        callbacks=[second],
        logger=CSVLogger(tmp_path / "b"),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer2.fit(module, _loader(tiny_tokenizer, TEXTS["arith"] * 4), ckpt_path=ckpt)
    assert calls == []  # the forecast came from the checkpoint
    restored = second.tracker
    assert torch.equal(
        restored.prediction.top_latents, saved["prediction"]["tensors"]["top_latents"]
    )
    assert torch.equal(restored.probe["rows"], saved["probe"]["rows"])
    assert restored.history[: len(saved["history"])] == saved["history"]
    assert [h["step"] for h in restored.history] == [4.0, 8.0]


def test_several_callbacks_have_distinct_state_keys(tiny_sae):
    a, b = _callback(tiny_sae), _callback(tiny_sae, layer=1)
    assert a.state_key != b.state_key


class _BrokenLogger(CSVLogger):
    def log_metrics(self, metrics, step=None):
        if any(k.startswith("sts/") for k in metrics):
            raise RuntimeError("logger down")
        super().log_metrics(metrics, step)


def test_broken_logger_does_not_stop_training_and_is_reported_once(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    with pytest.warns(UserWarning, match="logger _BrokenLogger failed") as record:
        trainer, _ = _fit(
            tmp_path,
            tiny_llama,
            tiny_tokenizer,
            _callback(tiny_sae),
            logger=_BrokenLogger(tmp_path),
        )
    assert trainer.global_step == 8
    assert sum("logger _BrokenLogger failed" in str(w.message) for w in record) == 1


def test_alarm_can_stop_training(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    cb = STSCallback(
        tiny_sae,
        domains=TEXTS,
        train_examples=[Example(t) for t in TEXTS["arith"]],
        k=8,
        every_n_steps=2,
        predict_config=PredictConfig(
            domain_demos=0, train_tokens=100, domain_tokens=100, progress=False
        ),
        tracker_config=TrackerConfig(
            probe_tokens=100, eval_tokens=50, alarm_threshold=1e-6, stop_on_alarm=True
        ),
    )
    with pytest.warns(UserWarning, match="held-out loss on"):
        trainer, _ = _fit(tmp_path, tiny_llama, tiny_tokenizer, cb, max_steps=20)
    assert trainer.global_step < 20


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"every_n_steps": 0}, ValueError, "every_n_steps"), ({"domains": {}}, ValueError, "domains")],
)
def test_bad_arguments(tiny_sae, kwargs, error, match):
    args = {"sae": tiny_sae, "domains": TEXTS, **kwargs}
    with pytest.raises(error, match=match):
        STSCallback(**args)


def test_module_without_hf_model_is_a_clear_error(tmp_path, tiny_sae, tiny_tokenizer, tiny_llama):
    class NoModel(UserModule):
        pass

    module = NoModel(copy.deepcopy(tiny_llama), tiny_tokenizer)
    module.net = module.model
    del module.model
    module.training_step = lambda batch, idx: module.net(**batch).loss
    module.configure_optimizers = lambda: torch.optim.SGD(module.net.parameters(), lr=0.1)
    trainer = Trainer(
        max_steps=1,
        callbacks=[_callback(tiny_sae)],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    with pytest.raises(ValueError, match="Hugging Face model at `model`"):
        trainer.fit(module, _loader(tiny_tokenizer, TEXTS["arith"]))


def test_saved_forecast_is_used_instead_of_recomputing(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch
):
    first = _callback(tiny_sae, every=100)
    _fit(tmp_path / "a", tiny_llama, tiny_tokenizer, first, max_steps=1)
    saved = first.tracker.prediction.save(tmp_path / "forecast")
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: pytest.fail("recomputed"))
    second = _callback(tiny_sae, every=2, forecast=str(saved))
    _fit(tmp_path / "b", tiny_llama, tiny_tokenizer, second, max_steps=2)
    assert torch.equal(second.tracker.prediction.shift, first.tracker.prediction.shift)
    assert second.tracker.history[-1]["step"] == 2


def test_forecast_from_another_sae_is_rejected(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    first = _callback(tiny_sae, every=100)
    _fit(tmp_path / "a", tiny_llama, tiny_tokenizer, first, max_steps=1)
    pred = first.tracker.prediction
    pred.layer = 2  # as if made at another layer
    with pytest.raises(ValueError, match="layer"):
        _fit(tmp_path / "b", tiny_llama, tiny_tokenizer, _callback(tiny_sae, forecast=pred), 1)


@pytest.mark.parametrize("mode", ["offline", "disabled"])
def test_wandb_offline_and_disabled_runs_complete(
    mode, tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch
):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), mode=mode, project="sts-test")
    callback = _callback(tiny_sae)
    trainer, _ = _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, logger=logger)
    assert trainer.global_step == 8
    assert not callback._guard.stopped  # tables, images and scalars all went through
    if mode == "offline":  # the run, with the tables and images logged at the end, is on disk
        (run,) = (tmp_path / "wandb").glob("offline-run-*")
        assert any(run.glob("run-*.wandb"))
    logger.experiment.finish()


def test_fewer_than_three_domains_warn_and_still_track(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    two = {k: TEXTS[k] for k in ("arith", "law")}
    cb = STSCallback(
        tiny_sae,
        domains=two,
        train_examples=[Example(t) for t in TEXTS["arith"]],
        k=8,
        every_n_steps=4,
        predict_config=PredictConfig(train_tokens=100, domain_tokens=100, progress=False),
        tracker_config=TrackerConfig(probe_tokens=100, eval_tokens=50),
    )
    with pytest.warns(UserWarning, match="needs 3 or more"):
        _fit(tmp_path, tiny_llama, tiny_tokenizer, cb)
    last = cb.tracker.history[-1]
    assert "sts/shift/total" in last and "sts/corr/pearson" not in last


def test_unknown_sae_id_offline_is_a_clear_error(tmp_path, tiny_llama, tiny_tokenizer):
    cb = STSCallback("no-such-release/no-such-sae", domains=TEXTS, train_examples=["a", "b", "c"])
    with pytest.raises(ValueError, match="`sae`"):
        _fit(tmp_path, tiny_llama, tiny_tokenizer, cb, max_steps=1)

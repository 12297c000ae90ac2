"""STSTrainerCallback in a TRL SFTTrainer script on a tiny model, read back from log_history."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from sts_lightning.data.prompts import Example
from sts_lightning.forecast import predict as predict_module
from sts_lightning.hf import STSTrainerCallback
from tests.test_callback import TEXTS

PREDICT = {"domain_demos": 1, "train_tokens": 200, "domain_tokens": 200}
TRACK = {"probe_tokens": 200, "eval_tokens": 100}


@pytest.fixture
def sae_dir(tmp_path, tiny_sae):
    tiny_sae.save_model(tmp_path / "sae")
    return str(tmp_path / "sae")


def _trainer(tmp_path, model, tokenizer, max_steps, **extra):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=3e-2,
        logging_steps=1,
        save_steps=3,
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        dataset_num_proc=None,
        **extra,
    )
    data = Dataset.from_list([{"text": t} for t in TEXTS["arith"] * 3])
    return SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def _attach(trainer, sae_dir):
    return STSTrainerCallback.attach(
        trainer,
        sae=sae_dir,
        domains=TEXTS,
        train_examples=[Example(t) for t in TEXTS["arith"]],
        k=8,
        every_n_steps=3,
        predict_config=PREDICT,
        tracker_config=TRACK,
    )


def test_sft_trainer_logs_forecast_and_realised_shift(
    tmp_path, tiny_llama, tiny_tokenizer, sae_dir
):
    trainer = _trainer(tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=6)
    callback = _attach(trainer, sae_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    history = trainer.state.log_history
    assert any("sts/pred/act/law" in h for h in history)
    shifts = [(h["step"], h["sts/shift/total"]) for h in history if "sts/shift/total" in h]
    assert [s for s, _ in shifts] == [3, 6] and all(v > 0 for _, v in shifts)
    assert any("sts/corr/pearson" in h for h in history)
    assert (tmp_path / "run" / "sts" / "realised_shift.png").exists()
    assert callback.tracker.history[-1]["step"] == 6


def test_resume_restores_tracker_state_without_recomputing(
    tmp_path, tiny_llama, tiny_tokenizer, sae_dir, monkeypatch
):
    first = _trainer(tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=3)
    cb = _attach(first, sae_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first.train()
    saved_top = cb.tracker.prediction.top_latents.clone()
    calls = []
    real = predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = _trainer(
        tmp_path,
        copy.deepcopy(tiny_llama).train(),
        tiny_tokenizer,
        max_steps=6,
        restore_callback_states_from_checkpoint=True,
    )
    _attach(second, sae_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    restored = next(
        c for c in second.callback_handler.callbacks if isinstance(c, STSTrainerCallback)
    )
    assert calls == []
    assert torch.equal(restored.tracker.prediction.top_latents, saved_top)
    assert [h["step"] for h in restored.tracker.history] == [3.0, 6.0]


def test_bad_arguments(sae_dir):
    with pytest.raises(ValueError, match="every_n_steps"):
        STSTrainerCallback(sae=sae_dir, domains=TEXTS, train_examples=["a", "b"], every_n_steps=0)
    with pytest.raises(ValueError, match="train_examples"):
        STSTrainerCallback(sae=sae_dir, domains=TEXTS)

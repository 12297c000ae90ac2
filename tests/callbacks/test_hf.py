"""STSTrainerCallback in a TRL SFTTrainer script on a tiny model, read back from log_history."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from sts_lightning.data.prompts import Example
from sts_lightning.forecast import predict as predict_module
from sts_lightning.hf import STSTrainerCallback
from sts_lightning.monitor.state import load_tracker_state
from tests.callbacks.test_sts import TEXTS

PREDICT = {"domain_demos": 1, "train_tokens": 200, "domain_tokens": 200}
TRACK = {"probe_tokens": 200, "eval_tokens": 100}


@pytest.fixture
def sae_dir(tmp_path, tiny_sae):
    tiny_sae.save_model(tmp_path / "sae")
    return str(tmp_path / "sae")


def _trainer(tmp_path, model, tokenizer, max_steps, data=None, callbacks=None, **extra):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=3e-2,
        logging_steps=1,
        save_steps=3,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        dataset_num_proc=None,
        **{"report_to": [], **extra},
    )
    data = Dataset.from_list(data or [{"text": t} for t in TEXTS["arith"] * 3])
    return SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=callbacks
    )


def _kwargs(sae, **overrides):
    return {
        "sae": sae,
        "domains": TEXTS,
        "train_examples": [Example(t) for t in TEXTS["arith"]],
        "k": 8,
        "every_n_steps": 3,
        "predict_config": PREDICT,
        "tracker_config": TRACK,
        **overrides,
    }


def _attach(trainer, sae_dir, **overrides):
    return STSTrainerCallback.attach(trainer, **_kwargs(sae_dir, **overrides))


class LogSpy(TrainerCallback):
    """What a ``report_to`` integration receives: the keys of every ``on_log`` call."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))

    def steps_with(self, key):
        return [step for step, logs in self.logs if key in logs]


def _train(trainer, resume=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=resume)


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


def test_resume_twice_keeps_forecast_reports_and_state(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, monkeypatch
):
    # The SAE is an object (no id to rebuild it from) and each run is a fresh trainer resumed
    # from the last checkpoint, as a restarted script does.
    calls, real = [], predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = tmp_path / "run"
    callbacks, spies, top = [], [], None
    for max_steps, resume in ((3, None), (6, run / "checkpoint-3"), (9, run / "checkpoint-6")):
        spies.append(LogSpy())
        trainer = _trainer(
            tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps,
            callbacks=[spies[-1]], restore_callback_states_from_checkpoint=True,
        )  # fmt: skip
        callbacks.append(_attach(trainer, tiny_sae))
        _train(trainer, None if resume is None else str(resume))
        live = [c for c in trainer.callback_handler.callbacks if isinstance(c, STSTrainerCallback)]
        assert live == [callbacks[-1]] and live[0].tracker is not None  # the attached one is back
        top = top if top is not None else callbacks[0].tracker.prediction.top_latents.clone()
        assert torch.equal(callbacks[-1].tracker.prediction.top_latents, top)
        state = load_tracker_state(run / f"checkpoint-{max_steps}" / "sts_tracker")
        assert [h["step"] for h in state["history"]] == [
            float(s) for s in range(3, max_steps + 1, 3)
        ]
    assert calls == [1]  # forecast once, restored from the checkpoint twice
    for spy, steps in zip(spies, ([3], [6], [9]), strict=True):
        assert spy.steps_with("sts/shift/total") == steps  # report_to got each run's metrics
        assert spy.steps_with("sts/pred/act/law") == [steps[0] - 3]  # and the forecast at begin
    assert [h["step"] for h in callbacks[-1].tracker.history] == [3.0, 6.0, 9.0]


def test_a_restored_callback_without_its_sae_object_is_a_clear_error(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    first = _trainer(tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=3)
    _attach(first, tiny_sae)
    _train(first)
    # Passed to the constructor, not attached: HF rebuilds it from JSON, which has no SAE object.
    callback = STSTrainerCallback(**_kwargs(tiny_sae))
    second = _trainer(
        tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=6,
        callbacks=[callback], restore_callback_states_from_checkpoint=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"restored from a checkpoint without its `sae`"):
        _train(second, str(tmp_path / "run" / "checkpoint-3"))


def _msg(role, content):
    return {"role": role, "content": content}


PAIRS = [(f"What is {a} + {b}?", f"The answer is {a + b}.") for a in range(4) for b in range(3)]
FORMATS = {
    "messages": lambda q, a: {"messages": [_msg("user", q), _msg("assistant", a)]},
    "conversational prompt/completion": lambda q, a: {
        "prompt": [_msg("user", q)],
        "completion": [_msg("assistant", a)],
    },
    "prompt/completion": lambda q, a: {"prompt": q, "completion": " " + a},
}


@pytest.mark.parametrize("form", list(FORMATS))
def test_train_examples_default_to_the_train_dataset(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, form
):
    rows = [FORMATS[form](q, a) for q, a in PAIRS]
    trainer = _trainer(
        tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=2, data=rows
    )
    callback = _attach(trainer, tiny_sae, train_examples=None, every_n_steps=2)
    _train(trainer)
    space = " " if form == "prompt/completion" else ""  # the completion's own leading space
    assert callback.tracker.train_examples == [Example(q, space + a) for q, a in PAIRS]
    assert not any("role" in e.prompt for e in callback.tracker.train_examples)  # not str(list)
    assert [h["step"] for h in callback.tracker.history] == [2.0]


def test_bad_arguments(sae_dir):
    with pytest.raises(ValueError, match="every_n_steps"):
        STSTrainerCallback(sae=sae_dir, domains=TEXTS, train_examples=["a", "b"], every_n_steps=0)
    with pytest.raises(ValueError, match="train_examples"):
        STSTrainerCallback(sae=sae_dir, domains=TEXTS, train_examples=[])
    with pytest.raises(ValueError, match="sae"):
        STSTrainerCallback(domains=TEXTS)


def test_a_saved_forecast_is_used_instead_of_recomputing(
    tmp_path, tiny_llama, tiny_tokenizer, sae_dir, monkeypatch
):
    first = _trainer(tmp_path / "a", copy.deepcopy(tiny_llama).train(), tiny_tokenizer, 3)
    made = _attach(first, sae_dir)
    _train(first)
    made.tracker.prediction.save(tmp_path / "forecast")
    calls, real = [], predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = _trainer(tmp_path / "b", copy.deepcopy(tiny_llama).train(), tiny_tokenizer, 3)
    used = _attach(second, sae_dir, forecast=str(tmp_path / "forecast"))
    _train(second)
    assert calls == []
    assert torch.equal(used.tracker.prediction.shift, made.tracker.prediction.shift)
    law = [h["sts/pred/act/law"] for h in second.state.log_history if "sts/pred/act/law" in h]
    assert law == [made.tracker.prediction.domains["law"].act]


def test_report_to_wandb_gets_tables_and_plots(
    tmp_path, tiny_llama, tiny_tokenizer, sae_dir, monkeypatch
):
    import json

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    trainer = _trainer(
        tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, 3, report_to=["wandb"]
    )
    _attach(trainer, sae_dir)
    # The run HF's integration started, through its own module, as the callback does. Its
    # folder: W&B keeps the settings of an earlier run in this process, WANDB_DIR included.
    wandb = next(c for c in trainer.callback_handler.callbacks if hasattr(c, "_wandb"))._wandb
    try:
        _train(trainer)
        run = Path(wandb.run.dir).parent
    finally:
        wandb.finish()
    tables = {p.name.split("_")[0]: p for p in run.glob("files/media/table/sts/*.table.json")}
    assert set(tables) == {"domains", "top"}
    doc = json.loads(tables["domains"].read_text())
    assert doc["columns"] == ["domain", "predicted", "realised_sts", "realised_delta"]
    assert sorted(r[0] for r in doc["data"]) == sorted(TEXTS)
    assert list(run.glob("files/media/images/sts/plots*.png"))


def test_a_tokenized_only_train_dataset_asks_for_train_examples(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    rows = [{"input_ids": tiny_tokenizer(t)["input_ids"]} for t in TEXTS["arith"]]
    trainer = _trainer(
        tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=2, data=rows
    )
    _attach(trainer, tiny_sae, train_examples=None)
    with pytest.raises(ValueError, match=r"`train_dataset` row 0.*pass `train_examples=`"):
        _train(trainer)


def test_resume_without_restoring_callback_states_still_reads_the_tracker_state(
    tmp_path, tiny_llama, tiny_tokenizer, sae_dir, monkeypatch
):
    first = _trainer(tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=3)
    _attach(first, sae_dir)
    _train(first)
    calls, real = [], predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = _trainer(tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=6)
    callback = _attach(second, sae_dir)
    _train(second, str(tmp_path / "run" / "checkpoint-3"))
    assert calls == [] and [h["step"] for h in callback.tracker.history] == [3.0, 6.0]


def test_hf_measures_once_per_optimizer_step_with_accumulation(
    tmp_path, tiny_llama, tiny_tokenizer, sae_dir
):
    spy = LogSpy()
    trainer = _trainer(
        tmp_path, copy.deepcopy(tiny_llama).train(), tiny_tokenizer, max_steps=4,
        callbacks=[spy], gradient_accumulation_steps=2,
    )  # fmt: skip
    callback = _attach(trainer, sae_dir, every_n_steps=2)
    _train(trainer)
    assert [h["step"] for h in callback.tracker.history] == [2.0, 4.0]
    assert spy.steps_with("sts/shift/total") == [2, 4]

"""One fine-tuning run of the experiment: nothing but the model outlives it, memory is returned."""

from __future__ import annotations

import gc
import weakref

import lightning.pytorch as pl
import pytest

from sts_lightning.data.prompts import Example
from sts_lightning.experiment import memory
from sts_lightning.experiment.config import ExperimentConfig, FinetuneConfig
from sts_lightning.experiment.finetune import finetune
from sts_lightning.experiment.forecast import Forecaster, to_prediction
from sts_lightning.forecast.config import PredictConfig

TRAIN = [Example(f"What is {a} + {b}?", f"It is {a + b}.") for a in range(4) for b in range(4)]
DOMAINS = {
    "law": [Example(f"The court held contract {i} void.", "Void.") for i in range(4)],
    "code": [Example(f"def f{i}(x):", f"    return x * {i}") for i in range(4)],
}
CFG = PredictConfig(
    layer=1, k=8, n_demos=1, domain_demos=1, train_tokens=40, domain_tokens=30, max_norm=1e4
)


@pytest.fixture
def run_inputs(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    forecaster = Forecaster(tiny_llama, tiny_tokenizer, tiny_sae, 1, CFG)
    domains, task = forecaster.domains(DOMAINS, seed=0), forecaster.task(TRAIN, seed=0)
    prediction = to_prediction(domains, task, layer=1, k=CFG.k, max_norm=1e4, config=CFG)
    finetune_cfg = FinetuneConfig(steps=2, batch_size=4, lr=1e-2, warmup_steps=0, track_every=1)
    job = ExperimentConfig(
        model=str(tmp_path / "model"), predict=CFG, finetune=finetune_cfg, wandb=False
    )
    return job, tiny_sae, prediction, tmp_path / "run"


@pytest.fixture
def spy_trainer(monkeypatch):
    """Weak references to the trainer, module and optimizer of every fit."""
    seen: dict[str, weakref.ref] = {}

    class Spy(pl.Trainer):
        def fit(self, model, *args, **kwargs):
            seen["trainer"], seen["module"] = weakref.ref(self), weakref.ref(model)
            super().fit(model, *args, **kwargs)
            seen["optimizer"] = weakref.ref(self.optimizers[0])
            seen["state"] = weakref.ref(next(iter(self.optimizers[0].state.values()))["exp_avg"])

    monkeypatch.setattr(pl, "Trainer", Spy)
    return seen


def test_only_the_model_outlives_a_finetune(run_inputs, spy_trainer, one_thread):
    job, sae, prediction, log_dir = run_inputs
    gc.collect()
    gc.disable()  # the cycle collector must not be what frees the run by chance
    try:
        model, tokenizer, tracker = finetune(
            job, "sums", False, TRAIN, 0, sae, prediction, DOMAINS, log_dir
        )
        alive = {name: ref() is not None for name, ref in spy_trainer.items()}
    finally:
        gc.enable()
    assert alive == {"trainer": False, "module": False, "optimizer": False, "state": False}
    assert all(p.grad is None for p in model.parameters())  # the last step's gradients too
    assert tracker.history and tokenizer is not None


def test_release_memory_runs_everywhere(monkeypatch):
    memory.release_memory()  # glibc here: malloc_trim found and called
    memory._malloc_trim.cache_clear()
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("", ""))  # e.g. musl
    try:
        assert memory._malloc_trim() is None
        memory.release_memory()
    finally:
        memory._malloc_trim.cache_clear()


def test_a_task_budget_and_an_early_stop_come_from_the_recipe(run_inputs, one_thread):
    """``task_steps`` caps the run; :class:`LearnedStop` ends it at the first check where the
    learned rule holds on the stop probe (here: at step 2 of a 6-step budget)."""
    import dataclasses

    import numpy as np

    from sts_lightning.experiment.learned_stop import LearnedStop
    from sts_lightning.experiment.task_learning import LearnedMargin

    job, sae, prediction, log_dir = run_inputs
    ft = dataclasses.replace(job.finetune, steps=6, task_steps={})
    n = 16
    base = {"nll": np.full(n, 20.0), "counts": np.full(n, 4.0), "correct": np.zeros(n)}
    calls = []

    def measure(model, tokenizer):
        calls.append(model.training)
        # The answer NLL falls by 1 nat/token from the second check on (at step 2).
        drop = 4.0 if len(calls) >= 2 else 0.0
        nll = base["nll"] - drop + np.linspace(-0.1, 0.1, n)
        return {"nll": nll, "counts": base["counts"], "correct": np.zeros(n)}

    stop = LearnedStop(measure, base, LearnedMargin(nll_drop=0.5), check_every=1)
    finetune(
        dataclasses.replace(job, finetune=ft), "sums", False, TRAIN, 0, sae, prediction,
        DOMAINS, log_dir, [stop],
    )  # fmt: skip
    assert stop.stopped_at == 2 and [c[:2] for c in stop.checks] == [(1, False), (2, True)]
    assert "answer NLL fell 0" in " ".join(stop.checks[0][2])  # why not learned yet


def test_task_budgets_are_checked_against_the_tasks():
    from sts_lightning.experiment.config import ExperimentConfig, FinetuneConfig

    ft = FinetuneConfig(steps=40, task_steps={"family": 20})
    assert ft.steps_for("family") == 20 and ft.steps_for("arithmetic") == 40
    with pytest.raises(ValueError, match=r"`finetune\.task_steps` names \['famly'\]"):
        ExperimentConfig(
            tasks=["arithmetic", "family"], finetune=FinetuneConfig(task_steps={"famly": 20})
        )
    with pytest.raises(ValueError, match=r"finetune\.task_steps\['family'\]"):
        FinetuneConfig(task_steps={"family": 0})
    with pytest.raises(ValueError, match=r"`finetune\.stop_when_learned` needs a rule"):
        FinetuneConfig(stop_when_learned=True, learned_margin=None)
    with pytest.raises(ValueError, match="`check_every` must be an int >= 1"):
        from sts_lightning.experiment.learned_stop import LearnedStop
        from sts_lightning.experiment.task_learning import LearnedMargin

        LearnedStop(lambda m, t: {}, {}, LearnedMargin(), check_every=0)


def test_a_lora_run_hands_back_its_adapter_merged(run_inputs, monkeypatch, one_thread):
    """With LoRA the model handed back is the plain HF model with the adapter folded into its
    weights: no peft wrapper left, the same logits as the trained adapter model."""
    import dataclasses

    import torch

    from sts_lightning.training.lora import LoraConfig

    job, sae, prediction, log_dir = run_inputs
    ft = dataclasses.replace(job.finetune, lora=LoraConfig(r=4, alpha=8), lr=5e-2)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    trained = {}

    class Keep(pl.Trainer):  # the adapter model's logits, read before it is merged
        def fit(self, model, *args, **kwargs):
            super().fit(model, *args, **kwargs)
            with torch.no_grad():
                trained["logits"] = model.model.eval()(ids).logits
                trained["base"] = model.model.get_base_model().__class__

    monkeypatch.setattr(pl, "Trainer", Keep)
    model, _, _ = finetune(
        dataclasses.replace(job, finetune=ft), "sums", False, TRAIN, 0, sae, prediction,
        DOMAINS, log_dir,
    )  # fmt: skip
    assert type(model) is trained["base"] and not hasattr(model, "peft_config")
    assert not any("lora" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        logits = model.eval()(ids).logits
    torch.testing.assert_close(logits, trained["logits"], rtol=1e-4, atol=1e-4)
    # The adapter trained: the merged model is not the untouched base.
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(job.model)
    with torch.no_grad():
        assert (base.eval()(ids).logits - logits).abs().max() > 1e-3

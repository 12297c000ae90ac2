"""The modules' optimizer and schedule (training/optim.py): chosen from YAML, rates as
transformers' schedules give them (checked against their closed forms), bad settings named."""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch import Callback, Trainer

from sts_lightning.cli.fit import build_cli
from sts_lightning.model import loading
from sts_lightning.training import optim
from sts_lightning.training.data import SFTDataModule
from sts_lightning.training.sft import SFTModule

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(16)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_llama, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def _cosine_min(step: int, warmup: int, total: int, min_rate: float) -> float:
    """transformers' ``cosine_with_min_lr`` written out: warm-up s / w, then a half cosine."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return min_rate + (1 - min_rate) * 0.5 * (1 + math.cos(math.pi * progress))


def _model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model[1].requires_grad_(False)  # frozen parameters are left out
    return model


def test_default_adamw_decays_matrices_only_at_the_module_rate():
    model = _model()
    opt = optim.build_optimizer(model, None, learning_rate=0.3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["params"] == [model[0].weight] and decay["weight_decay"] == 0.1
    assert no_decay["params"] == [model[0].bias] and no_decay["weight_decay"] == 0.0
    assert all(g["lr"] == 0.3 for g in opt.param_groups)


def test_an_optimizer_callable_gets_the_groups():
    sgd = functools.partial(torch.optim.SGD, momentum=0.9)
    opt = optim.build_optimizer(_model(), sgd, learning_rate=0.05, weight_decay=0.0)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.05]
    assert opt.defaults["momentum"] == 0.9


def test_a_rate_set_in_two_places_is_refused():
    sgd = functools.partial(torch.optim.SGD, lr=0.5)
    with pytest.raises(ValueError, match=r"given lr=0.5; set the module's `learning_rate`"):
        optim.build_optimizer(_model(), sgd, learning_rate=0.05, weight_decay=0.0)
    adamw = functools.partial(torch.optim.AdamW, weight_decay=0.3)
    with pytest.raises(ValueError, match="`weight_decay`"):
        optim.build_optimizer(_model(), adamw, learning_rate=0.05, weight_decay=0.0)
    with pytest.raises(TypeError, match="`optimizer` must build"):
        optim.build_optimizer(_model(), lambda groups: groups, learning_rate=1, weight_decay=0)


@pytest.mark.parametrize(
    ("name", "kwargs", "oracle"),
    [
        ("linear", {}, lambda s, w, t: s / max(1, w) if s < w else max(0, (t - s) / (t - w))),
        ("constant_with_warmup", {}, lambda s, w, t: min(1.0, s / max(1, w))),
        ("cosine_with_min_lr", {"min_lr_rate": 0.2}, lambda s, w, t: _cosine_min(s, w, t, 0.2)),
    ],
)
def test_schedules_follow_their_closed_forms(name, kwargs, oracle):
    opt = optim.build_optimizer(_model(), None, learning_rate=2.0, weight_decay=0.0)
    config = optim.build_scheduler(
        opt, name, warmup_steps=0.25, total=10, lr_scheduler_kwargs=kwargs
    )
    assert config["interval"] == "step"
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        config["scheduler"].step()
    # warmup_steps=0.25 of 10 steps: ceil(2.5) = 3, as transformers 5's TrainingArguments.
    assert rates == pytest.approx([2.0 * oracle(s, 3, 10) for s in range(10)])


def test_bad_schedules_are_named():
    with pytest.raises(ValueError, match="`lr_scheduler_type` must be one of"):
        optim.check_schedule(1e-3, 0.0, 0, "reduce_lr_on_plateau", None)
    with pytest.raises(ValueError, match="`lr_scheduler_kwargs` must be a dict"):
        optim.check_schedule(1e-3, 0.0, 0, "cosine", [0.1])
    opt = optim.build_optimizer(_model(), None, learning_rate=1.0, weight_decay=0.0)
    with pytest.raises(ValueError, match="do not fit `lr_scheduler_type='linear'`"):
        optim.build_scheduler(opt, "linear", warmup_steps=0, total=5,
                              lr_scheduler_kwargs={"min_lr_rate": 0.1})  # fmt: skip
    with pytest.raises(ValueError, match="needs the run's length"):
        optim.build_scheduler(opt, "cosine", warmup_steps=0, total=math.inf)
    with pytest.raises(ValueError, match="a fraction of the run, whose length is unknown"):
        optim.build_scheduler(opt, "constant_with_warmup", warmup_steps=0.1, total=math.inf)


def test_model_init_kwargs_reach_from_pretrained(tiny_dir):
    module = SFTModule(tiny_dir, model_init_kwargs={"attn_implementation": "eager"})
    assert module.model.config._attn_implementation == "eager"
    assert SFTModule(tiny_dir).model.config._attn_implementation != "eager"


def test_sgd_recipe_with_cosine_min_lr_parses_and_runs_two_steps(tmp_path, monkeypatch, tiny_dir):
    """The shipped SGD recipe as written (data and callbacks shrunk), on the tiny model."""
    recipe = yaml.safe_load((ROOT / "recipes" / "sft_arithmetic_smollm2_sgd.yaml").read_text())
    trainer = recipe["trainer"]
    trainer |= {"max_steps": 2, "val_check_interval": None, "limit_val_batches": 0}
    trainer |= {"accelerator": "cpu", "callbacks": [], "logger": trainer["logger"][:1]}
    recipe["data"]["init_args"] |= {"train_size": 8, "batch_size": 4, "val_domains": []}
    recipe["data"]["init_args"] |= {"val_from_train": 0, "max_length": 128}
    (tmp_path / "sgd.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading, "resolve_model", lambda name, cache_dir=None: tiny_dir)
    cli = build_cli(["fit", "--config", str(tmp_path / "sgd.yaml"), "--weights_only=true"])

    (opt,) = cli.trainer.optimizers
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"] is True
    assert cli.trainer.global_step == 2
    (metrics,) = (tmp_path / "runs" / "sft_arithmetic_smollm2_sgd" / "csv").glob("*/metrics.csv")
    with metrics.open() as f:
        rates = [float(r["lr"]) for r in csv.DictReader(f) if r.get("lr")]
    # 2 steps, warmup_steps 0.1 → ceil(0.2) = 1 step: 0 at step 0, then the cosine at step 1.
    peak = recipe["model"]["init_args"]["learning_rate"]
    assert rates == pytest.approx([peak * _cosine_min(s, 1, 2, 0.1) for s in range(2)])


def test_sft_resume_restores_the_schedule(tmp_path, tiny_dir, tiny_tokenizer):
    """A run stopped at step 2 and resumed logs the rates an uninterrupted run does."""
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    class Rates(Callback):
        def __init__(self) -> None:
            self.rates: list[float] = []

        def on_train_batch_start(self, trainer, *args) -> None:
            self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def run(steps: int, ckpt_path=None, callbacks=()):
        rates = Rates()
        schedule = {"lr_scheduler_type": "cosine_with_min_lr"}
        schedule["lr_scheduler_kwargs"] = {"min_lr_rate": 0.1}
        module = SFTModule(tiny_dir, learning_rate=1e-2, warmup_steps=2, **schedule,
                           save_hf_on_fit_end=False)  # fmt: skip
        data = SFTDataModule(EXAMPLES, train_size=None, batch_size=4, max_length=64, seed=0)
        Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=bool(callbacks),
                callbacks=[rates, *callbacks]).fit(module, data, ckpt_path=ckpt_path)  # fmt: skip
        return rates.rates

    full = run(6)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=2)
    run(2, callbacks=[ckpt])
    # max_steps stays 6 in the resumed run, so the schedule is the uninterrupted run's.
    resumed = run(6, ckpt_path=next(tmp_path.glob("*step=2.ckpt")))
    assert resumed == pytest.approx(full[2:])
    assert full == pytest.approx([1e-2 * _cosine_min(s, 2, 6, 0.1) for s in range(6)])


class _GradNorms(Callback):
    """The gradients' total norm as the optimizer stepped with them (after any clipping)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:  # zero_grad runs before the first step too, with no gradients yet
            self.norms.append(
                float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            )


def _fit_one(tiny_dir, precision: str, clip: float | None, steps: int = 3):
    norms = _GradNorms()
    module = SFTModule(tiny_dir, save_hf_on_fit_end=False)
    data = SFTDataModule(EXAMPLES, train_size=None, batch_size=4, max_length=64, seed=0)
    trainer = Trainer(accelerator="cpu", precision=precision, gradient_clip_val=clip,
                      max_steps=steps, logger=False, enable_progress_bar=False, callbacks=[norms],
                      enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    trainer.fit(module, data)
    return trainer, norms.norms


def test_bf16_mixed_keeps_the_fused_adamw_and_clips_it(tiny_dir):
    """bf16-mixed has no gradient scaler: the default AdamW stays fused, and Lightning's
    plugin clips its gradients (it refuses optimizers that unscale a scaler's gradients)."""
    trainer, clipped = _fit_one(tiny_dir, "bf16-mixed", clip=1e-3)
    assert trainer.global_step == 3 and trainer.optimizers[0].defaults["fused"]
    assert optim.fused_allowed(None) and optim.fused_allowed(trainer)
    assert len(clipped) >= 2 and max(clipped) <= 1e-3 * (1 + 1e-4), clipped
    _, unclipped = _fit_one(tiny_dir, "bf16-mixed", clip=None)
    assert min(unclipped) > 1e-2, unclipped  # so the clip above did act


def test_a_gradient_scaler_gets_an_unfused_adamw():
    """16-mixed scales the loss: a fused kernel would unscale after Lightning clips."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaled = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    assert not optim.fused_allowed(SimpleNamespace(precision_plugin=scaled))
    assert optim.fused_allowed(
        SimpleNamespace(precision_plugin=MixedPrecision("bf16-mixed", "cpu"))
    )

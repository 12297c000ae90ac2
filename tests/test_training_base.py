"""What SFTModule and GRPOModule share (training/base.py): the schedule, lazy loading and the
checkpoint policy, on toy modules; the modules themselves are in test_sft.py / test_grpo.py."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import LightningModule

from sts_lightning.training.base import HFModelMixin, lr_factor, trainable_keys
from sts_lightning.training.grpo import GRPOModule


def _grpo_before(step: int, warmup: int, total: float, schedule: str) -> float:
    """GRPOModule's schedule as it was written before the modules shared one."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant" or not math.isfinite(total):
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


@pytest.mark.parametrize("warmup", [0, 1, 3])
@pytest.mark.parametrize("total", [4, 10, math.inf])
@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_each_module_keeps_its_warmup(warmup, total, schedule):
    steps = range(int(total) if math.isfinite(total) else 20)  # the steps a run takes
    kwargs = {"warmup": warmup, "total": total, "schedule": schedule}
    grpo = [lr_factor(s, **kwargs, peak_in_warmup=False) for s in steps]
    assert grpo == pytest.approx([_grpo_before(s, warmup, total, schedule) for s in steps])
    sft = [lr_factor(s, **kwargs) for s in steps]
    assert sft[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])


def test_linear_decay_equals_transformers_after_warmup():
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    (theirs,) = get_linear_schedule_with_warmup(opt, 3, 10).lr_lambdas
    ours = [lr_factor(s, warmup=3, total=10, schedule="linear") for s in range(3, 11)]
    assert ours == pytest.approx([theirs(s) for s in range(3, 11)])


class _Toy(HFModelMixin, LightningModule):
    """A frozen base with one trainable layer, and a counter buffer of the module's own."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.loads = 0

    def configure_model(self) -> None:
        if "model" in self._modules:
            return
        self.loads += 1
        torch.manual_seed(0)  # the same "base model" every time
        model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        model[0].requires_grad_(False)
        self._install_model(model)

    @property
    def tokenizer(self):
        return None


def test_model_loads_lazily_once():
    toy = _Toy()
    assert "model" not in toy._modules and toy.loads == 0
    assert toy.model is toy.model and toy.loads == 1
    assert "model" not in GRPOModule("no/such/model")._modules  # nothing read when built


def test_checkpoints_hold_trainable_weights_and_own_state():
    toy = _Toy()
    with torch.no_grad():  # "training": the trainable layer and the counter move
        toy.model[1].weight += 1.0
        toy.count += 3
    checkpoint = {"state_dict": toy.state_dict()}
    toy.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {"count", "model.1.weight", "model.1.bias"}
    assert not toy.strict_loading  # FSDP loads before the hook can fill the frozen weights in
    fresh = _Toy()
    fresh.on_load_checkpoint(checkpoint)  # loads the base, fills in the frozen weights
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    for key, value in toy.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match=r"missing \['model.1.bias'\]"):
        _Toy().on_load_checkpoint({"state_dict": {"count": 0, "model.1.weight": 0}})
    with pytest.raises(RuntimeError, match=r"unexpected \['model.2.weight'\]"):
        _Toy().on_load_checkpoint({"state_dict": {**checkpoint["state_dict"], "model.2.weight": 0}})
    _Toy().on_load_checkpoint({})  # FSDP strategies pop the weights: nothing to check


def test_sharded_and_wrapped_checkpoints():
    toy = _Toy()
    sharded = type("DTensor", (), {})()  # what a sharded state dict holds instead of tensors
    checkpoint = {"state_dict": {"model.0.weight": sharded, "model.1.weight": sharded}}
    toy.on_save_checkpoint(checkpoint)
    assert len(checkpoint["state_dict"]) == 2  # every rank's shard: a sharded load needs all
    # FSDP / activation checkpointing wrap modules; the state-dict keys do not show it.
    outer = torch.nn.Module()
    outer.model = torch.nn.Module()
    outer.model._fsdp_wrapped_module = torch.nn.Module()
    outer.model._fsdp_wrapped_module._checkpoint_wrapped_module = torch.nn.Linear(2, 2)
    outer.model._fsdp_wrapped_module._checkpoint_wrapped_module.bias.requires_grad_(False)
    assert trainable_keys(outer) == {"model.weight"}

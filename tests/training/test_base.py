"""What SFTModule and GRPOModule share (training/base.py): lazy loading and the checkpoint
policy, on toy modules; the modules themselves are in test_sft.py / test_grpo.py, their optimizer
and schedule in test_optim.py."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule

from sts_lightning.training.base import HFModelMixin, trainable_keys
from sts_lightning.training.grpo import GRPOModule


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

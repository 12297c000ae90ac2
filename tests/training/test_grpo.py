"""GRPOModule on the tiny model (its math alone: tests/training/test_grpo_loss.py)."""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from sts_lightning.training.grpo import GRPOConfig, GRPOModule
from sts_lightning.training.lora import LoraConfig

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(4)]


def even_token_reward(prompts, completions, completion_ids, **kwargs):
    """Fraction of even token ids: ~0.5 for a random model, learnable in a few steps."""
    return [sum(t % 2 == 0 for t in ids) / max(len(ids), 1) for ids in completion_ids]


class Recorder(pl.Callback):
    """Every logged metric after every training batch."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    def curve(self, key: str) -> list[float]:
        return [step[key] for step in self.steps]


def make_module(model, tokenizer, **kwargs) -> GRPOModule:
    grpo = GRPOConfig(
        **{"num_generations": 4, "max_completion_length": 4, **kwargs.pop("grpo", {})}
    )
    defaults = dict(
        reward_funcs=[even_token_reward], learning_rate=0.1, lr_scheduler_type="constant"
    )
    return GRPOModule(copy.deepcopy(model), tokenizer, grpo=grpo, **{**defaults, **kwargs})


def fit(module, max_steps, *, data=None, callbacks=(), ckpt_path=None, **kwargs):
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[recorder, *callbacks],
        **kwargs,
    )
    loader = data or torch.utils.data.DataLoader(PROMPTS, batch_size=4)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, recorder


# ----------------------------------------------------------------------------- the module
def test_reward_function_errors_name_the_function(tiny_llama, tiny_tokenizer):
    def exploding_reward(prompts, completions, **kwargs):
        raise ZeroDivisionError("boom")

    def short_reward(prompts, completions, **kwargs):
        return [0.0]

    batch = {"prompt": ["What is 1 + 1?"], "answer": ["2"]}
    module = make_module(tiny_llama, tiny_tokenizer, reward_funcs=[exploding_reward])
    with pytest.raises(RuntimeError, match="`exploding_reward` raised ZeroDivisionError: boom"):
        module._rollout(batch)
    module = make_module(tiny_llama, tiny_tokenizer, reward_funcs=[short_reward])
    with pytest.raises(ValueError, match="`short_reward` returned 1 rewards for 4 completions"):
        module._rollout(batch)
    with pytest.raises(ValueError, match="`reward_weights`"):
        make_module(tiny_llama, tiny_tokenizer, grpo={"reward_weights": [1.0, 2.0]})


def test_a_few_steps_raise_the_reward(tiny_llama, tiny_tokenizer):
    module = make_module(tiny_llama, tiny_tokenizer)
    _, rec = fit(module, 6)
    curve = rec.curve("train/reward")
    assert len(curve) == 6
    assert sum(curve[-2:]) / 2 > sum(curve[:2]) / 2 + 0.2, curve
    trl_keys = {  # TRL 1.16's GRPOTrainer._metrics keys, under train/
        "reward", "reward_std", "frac_reward_zero_std", "num_tokens", "entropy",
        "rewards/even_token_reward/mean", "rewards/even_token_reward/std",
        "completions/mean_length", "completions/min_length", "completions/max_length",
        "completions/clipped_ratio", "completions/mean_terminated_length",
        "completions/min_terminated_length", "completions/max_terminated_length",
        "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "loss",
    }  # fmt: skip
    assert {f"train/{k}" for k in trl_keys} | {"lr"} <= set(rec.steps[-1])
    assert "train/kl" not in rec.steps[-1]  # beta = 0, as TRL
    # 4 prompts x 4 completions per step: the token count grows by at least 16 per step.
    tokens = rec.curve("train/num_tokens")
    assert all(b - a >= 16 for a, b in itertools.pairwise(tokens))
    assert int(module.tokens_seen) == tokens[-1]
    assert rec.steps[-1]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("lora", [False, True], ids=["frozen-copy", "lora-adapter-off"])
def test_kl_is_zero_before_the_first_update(tiny_llama, tiny_tokenizer, lora):
    settings = LoraConfig(r=4, alpha=8) if lora else None
    module = make_module(tiny_llama, tiny_tokenizer, grpo={"beta": 0.1}, lora=settings)
    assert (module.ref_model is None) == lora  # LoRA: no second copy of the model
    base = {n: p.detach().clone() for n, p in module.model.named_parameters() if "lora" not in n}
    _, rec = fit(module, 3)
    kl = rec.curve("train/kl")
    assert kl[0] == 0.0 and kl[-1] > 0.0, kl
    if lora:  # only the adapter moved
        for name, param in module.model.named_parameters():
            if "lora" not in name:
                assert torch.equal(param, base[name]), name


def test_num_iterations_reuse_each_rollout(tiny_llama, tiny_tokenizer):
    module = make_module(tiny_llama, tiny_tokenizer, grpo={"num_iterations": 2}, learning_rate=1e-2)
    trainer, rec = fit(module, 4)
    # Two rollouts of two optimizer steps each; the second step's ratios move off 1.
    assert len(rec.steps) == 2 and trainer.global_step == 4
    assert all(math.isfinite(step["train/loss"]) for step in rec.steps)


def test_validation_logs_the_mean_reward(tiny_llama, tiny_tokenizer):
    from sts_lightning.training.data import PromptDataModule

    data = PromptDataModule(PROMPTS, train_size=None, val_from_train=2, batch_size=2)
    module = make_module(tiny_llama, tiny_tokenizer)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    assert 0.0 <= metrics["val/reward"] <= 1.0
    assert metrics["val/reward/train_heldout"] == metrics["val/reward"]
    keys = {"reward_std", "rewards/even_token_reward/mean", "rewards/even_token_reward/std"}
    keys |= {"completions/mean_length", "completions/clipped_ratio"}
    assert {f"val/{k}" for k in keys} <= set(metrics)
    assert 1.0 <= metrics["val/completions/mean_length"] <= 4.0


def test_resume_reproduces_the_uninterrupted_curve(tiny_llama, tiny_tokenizer, tmp_path):
    from sts_lightning.training.data import PromptDataModule

    def data():  # 2 batches per epoch: the interruption falls mid-epoch
        return PromptDataModule(PROMPTS, train_size=None, batch_size=2, seed=3)

    def module():
        return make_module(
            tiny_llama, tiny_tokenizer, learning_rate=0.05, lr_scheduler_type="linear"
        )

    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = trainer.global_step >= 3

    _, full = fit(module(), 5, data=data())
    trainer, first = fit(module(), 5, data=data(), callbacks=[StopAt()])
    trainer.save_checkpoint(tmp_path / "step3.ckpt")
    _, rest = fit(module(), 5, data=data(), ckpt_path=tmp_path / "step3.ckpt")
    for key in ("train/reward", "train/loss", "lr"):
        assert first.curve(key) + rest.curve(key) == pytest.approx(full.curve(key), rel=1e-5)
    # The token count is checkpointed: it continues (it would restart from 0 otherwise).
    assert rest.curve("train/num_tokens")[0] > first.curve("train/num_tokens")[-1]


def test_lora_checkpoint_holds_the_adapter_and_save_hf(tiny_llama, tiny_tokenizer, tmp_path):
    module = make_module(tiny_llama, tiny_tokenizer, lora=LoraConfig(r=4))
    trainer, _ = fit(module, 1)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    state = torch.load(tmp_path / "a.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in key for key in state if key != "tokens_seen")
    fresh = make_module(tiny_llama, tiny_tokenizer, lora=LoraConfig(r=4))
    fresh.on_load_checkpoint({"state_dict": state})
    fresh.load_state_dict(state, strict=False)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    out = module.save_hf(tmp_path / "hf")
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer_config.json").is_file()
    with pytest.raises(RuntimeError, match="LoRA adapter"):
        make_module(tiny_llama, tiny_tokenizer, lora=LoraConfig(r=2)).on_load_checkpoint(
            {"state_dict": {"model.other": torch.zeros(1)}}
        )


_DDP_SCRIPT = """
import json, os, sys
import lightning.pytorch as pl
import torch
from sts_lightning.training.data import PromptDataModule
from sts_lightning.training.grpo import GRPOConfig, GRPOModule

def even_token_reward(prompts, completions, completion_ids, **kwargs):
    return [sum(t % 2 == 0 for t in ids) / max(len(ids), 1) for ids in completion_ids]

class Record(pl.Callback):
    rewards = []
    def on_train_batch_end(self, trainer, *args):
        self.rewards.append(float(trainer.callback_metrics["train/reward"]))

model_dir, out = sys.argv[1], sys.argv[2]
module = GRPOModule(model_dir, reward_funcs=[even_token_reward], learning_rate=0.05,
                    grpo=GRPOConfig(num_generations=4, max_completion_length=4, beta=0.05))
prompts = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, log_every_n_steps=1, callbacks=[Record()])
trainer.fit(module, datamodule=PromptDataModule(prompts, train_size=None, batch_size=2))
checksum = sum(p.double().sum().item() for p in module.model.parameters())
with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
    json.dump({"checksum": checksum, "rewards": Record.rewards,
               "world": trainer.world_size}, f)
"""


def test_ddp_on_two_cpu_processes(tiny_llama, tiny_tokenizer, tmp_path):
    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    script = tmp_path / "ddp_grpo.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "model"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # Gradients were all-reduced: both replicas hold the same weights after the updates...
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)
    # ...and the logged reward is over the gathered rollout, so equal on every rank.
    assert ranks[0]["rewards"] == ranks[1]["rewards"] and len(ranks[0]["rewards"]) == 2


@pytest.mark.slow
def test_smollm2_recipe_runs_two_steps(tmp_path, monkeypatch):
    from sts_lightning.cli.fit import run

    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "recipes" / "grpo_arithmetic_smollm2.yaml"
    args = ["fit", "--config", str(recipe), "--trainer.max_steps", "2"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.limit_val_batches", "1"]
    assert run(args) == 0
    metrics = list(tmp_path.rglob("metrics.csv"))
    assert metrics, list(tmp_path.rglob("*"))
    header = metrics[0].read_text().splitlines()[0].split(",")
    assert {"train/reward", "train/rewards/accuracy_reward/mean", "train/loss"} <= set(header)


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("grpo_*.yaml")), ids=str)
def test_recipes_parse(recipe):
    from sts_lightning.cli.fit import parse_config

    cfg = parse_config(["--config", str(recipe)])
    assert cfg.model.class_path == "sts_lightning.training.grpo.GRPOModule"
    assert cfg.data.class_path == "sts_lightning.training.data.PromptDataModule"


def test_gpu_recipe_runs_on_cpu_with_the_tiny_model(
    tiny_llama, tiny_tokenizer, tmp_path, monkeypatch
):
    """Everything in the 7B recipe but the model, the GPU and the dataset: LoRA, the KL to the
    adapter-off model, bf16-mixed, micro-batches, truncation masking, validation, loggers."""
    from sts_lightning.cli.fit import run

    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    recipe = ROOT / "recipes" / "grpo_gsm8k_qwen2.5_7b.yaml"
    overrides = {
        "model.init_args.model": str(tmp_path / "model"),
        "model.init_args.dtype": "float32",
        "model.init_args.grpo.max_completion_length": "4",
        "trainer.accelerator": "cpu",
        "trainer.max_steps": "2",
        "trainer.val_check_interval": "2",
        "trainer.default_root_dir": str(tmp_path / "runs"),
        "data.init_args.train": "arithmetic",
        "data.init_args.train_subset": "null",
        "data.init_args.prompt_column": "prompt",
        "data.init_args.train_size": "8",
        "data.init_args.val_from_train": "2",
        "data.init_args.batch_size": "2",
    }
    monkeypatch.chdir(tmp_path)  # the recipe's loggers write under ./runs
    args = [f"--{key}={value}" for key, value in overrides.items()]
    assert run(["fit", "--config", str(recipe), *args]) == 0
    (metrics,) = (tmp_path / "runs").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"train/kl", "train/rewards/accuracy_reward/mean", "val/reward"} <= set(header), header

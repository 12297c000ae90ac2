"""Every training recipe parses, type-checks and instantiates through the CLI, offline.

How a GPU recipe is checked on a CPU machine without downloading anything:

1. ``parse_config`` parses the recipe *as written*: every ``class_path`` must import and every
   key must match a signature, and nothing is instantiated.
2. ``build_cli(..., run=False)`` then instantiates it with the hardware overridden to one CPU
   process and with :func:`sts_lightning.model.loading.resolve_model` patched so that every model
   name resolves to a tiny local checkpoint. ``SFTModule`` and ``GRPOModule`` load no weights
   when built (they load them in ``configure_model``), so this checks it stays that way; a module
   that loaded eagerly would get the tiny model instead of a download.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from sts_lightning.cli.fit import build_cli, parse_config
from sts_lightning.model import loading as embedded
from sts_lightning.training.grpo import GRPOModule
from sts_lightning.training.sft import SFTModule

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(
    p for p in (ROOT / "recipes").glob("*.yaml") if p.name.startswith(("sft_", "grpo_"))
)
ON_ONE_CPU = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",
    "--trainer.strategy=auto",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_llama, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def test_there_are_recipes():
    assert {p.name for p in RECIPES} >= {"sft_arithmetic_smollm2.yaml", "sft_limo_llama3_8b.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_instantiates(recipe, tmp_path, monkeypatch, tiny_dir):
    monkeypatch.chdir(tmp_path)  # recipes write under relative runs/ directories
    config = parse_config(["--config", str(recipe)])
    assert config.model.class_path and config.data.class_path
    assert config.trainer.max_steps > 0 or (config.trainer.max_epochs or 0) > 0

    monkeypatch.setattr(embedded, "resolve_model", lambda name, cache_dir=None: tiny_dir)
    cli = build_cli(["--config", str(recipe), *ON_ONE_CPU], run=False)
    assert isinstance(cli.trainer, Trainer)
    assert cli.model.hparams  # checkpoints can rebuild the module
    assert isinstance(cli.model, (SFTModule, GRPOModule))
    assert "model" not in cli.model._modules  # building the module read no weights
    if isinstance(cli.model, SFTModule):
        assert cli.model.hparams.model_name_or_path == config.model.init_args.model_name_or_path
    else:
        assert cli.model.hparams.model == config.model.init_args.model


def test_cli_rejects_unknown_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = ROOT / "recipes" / "sft_arithmetic_smollm2.yaml"
    with pytest.raises(SystemExit):
        parse_config(["--config", str(recipe), "--model.init_args.lr=1"])


@pytest.mark.slow
def test_arithmetic_recipe_runs_offline(tmp_path):
    recipe = ROOT / "recipes" / "sft_arithmetic_smollm2.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "sts_lightning.cli", "fit", "--config", str(recipe)]
    proc = subprocess.run(
        [*command, "--trainer.max_steps", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "sft_arithmetic_smollm2" / "csv" / "version_0"
    with (run / "metrics.csv").open() as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]
    assert len(losses) == 3
    assert (run / "config.yaml").is_file() and (run / "hf_model" / "config.json").is_file()
    assert list((tmp_path / "runs" / "sft_arithmetic_smollm2" / "wandb").glob("offline-run-*"))


def test_sft_recipes_enable_the_sts_callback():
    from sts_lightning.callbacks import STSCallback
    from sts_lightning.forecast.recipe_sae import RecipeSAE

    for recipe in (p for p in RECIPES if p.name.startswith("sft_")):
        config = parse_config(["--config", str(recipe)])
        (sts,) = [c for c in config.trainer.callbacks if c.class_path.endswith("STSCallback")]
        assert sts.class_path == "sts_lightning.callbacks.STSCallback", recipe.name
        sae = sts.init_args.sae  # a sae-lens id, or the SAE a predict recipe trains (cached)
        assert isinstance(sae, str) or sae.class_path == f"{RecipeSAE.__module__}.RecipeSAE"
        assert sts.init_args.domains and STSCallback


def test_sts_callback_from_yaml_runs(tmp_path, monkeypatch, tiny_dir, tiny_sae):
    """The SFT recipe's callback block as written, on the tiny model and SAE, for 2 steps."""
    import yaml

    tiny_sae.save_model(tmp_path / "sae")
    (tmp_path / "predict.yaml").write_text(
        f"model: {tiny_dir}\nsae: {tmp_path / 'sae'}\ndevice: cpu\ndomains: [math]\n"
    )
    recipe = yaml.safe_load((ROOT / "recipes" / "sft_arithmetic_smollm2.yaml").read_text())
    trainer = recipe["trainer"]
    (sts,) = [c for c in trainer["callbacks"] if c["class_path"].endswith("STSCallback")]
    sts["init_args"]["sae"]["init_args"]["recipe"] = str(tmp_path / "predict.yaml")
    sts["init_args"] |= {"layer": 1, "k": 8, "every_n_steps": 1, "domains": ["math"]}
    sts["init_args"]["predict_config"] |= {"train_tokens": 40, "domain_tokens": 20}
    sts["init_args"]["heldout_items"] = 2
    trainer |= {"max_steps": 2, "val_check_interval": None, "limit_val_batches": 0}
    trainer["logger"] = trainer["logger"][:1]  # CSV only: W&B is covered by the slow run
    recipe["data"]["init_args"] |= {"train_size": 8, "batch_size": 4, "val_domains": []}
    recipe["data"]["init_args"] |= {"val_from_train": 0, "max_length": 128}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(embedded, "resolve_model", lambda name, cache_dir=None: tiny_dir)
    cli = build_cli(["fit", "--config", str(tmp_path / "sft.yaml"), *ON_ONE_CPU])
    (callback,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "STSCallback"]
    assert callback.tracker is not None, "the STS callback failed: see its warning"
    assert callback.tracker.measured_at(2)  # the realised shift at the last step
    (metrics,) = (tmp_path / "runs" / "sft_arithmetic_smollm2" / "csv").glob("*/metrics.csv")
    with metrics.open() as f:
        columns = next(csv.reader(f))
    assert any(c.startswith("sts/pred/") and c.endswith("/math") for c in columns), columns
    assert "sts/shift/total" in columns, columns
    # The resolved recipe beside the run names the SAE as written, not a loaded object.
    assert (
        "class_path: sts_lightning.forecast.recipe_sae.RecipeSAE"
        in (metrics.parent / "config.yaml").read_text()
    )


def test_recipe_sae_names_a_missing_recipe_and_loads_lazily():
    from sts_lightning.forecast.recipe_sae import RecipeSAE

    with pytest.raises(ValueError, match="`recipe`='nope' is neither a shipped recipe"):
        RecipeSAE("nope")
    sae = RecipeSAE("predict_arithmetic_smollm2")
    assert sae._sae is None and repr(sae) == "RecipeSAE('predict_arithmetic_smollm2')"

"""Bad inputs from disk and recipes: corrupted caches and states, malformed YAML, bad callbacks.

The part of the bad-input suite (see tests/test_bad_inputs.py) that reads files or runs a
Lightning callback. Each case must end in a ValueError/TypeError/SystemExit whose message names
the argument or file, or in a documented recovery (a corrupted SAE cache is retrained).
"""

from __future__ import annotations

import pytest
import torch

from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.prediction import DomainScore, Prediction
from sts_lightning.monitor.tracker import load_tracker_state, save_tracker_state
from sts_lightning.stats import LatentMoments

GARBAGE = b"\x00not a safetensors file\xff" * 4


def _prediction(d_sae: int = 64, layer: int = 1) -> Prediction:
    score = DomainScore(
        act=1.0, notebook=1.0, signed=0.0, icl=None, n_tokens=5, n_dropped=0, budget=5,
        n_examples=1,
    )  # fmt: skip
    return Prediction(
        domains={"law": score},
        shift=torch.arange(d_sae, dtype=torch.float32),
        signed_shift=torch.zeros(d_sae),
        top_latents=torch.arange(4),
        layer=layer,
        train={"n_tokens": 5, "n_dropped": 0, "n_examples": 1, "budget": 5},
        quality={"fvu": 0.1, "l0": 3.0, "dead_fraction": 0.0},
        max_norm=100.0,
        config={},
    )


# ----------------------------------------------------------------------------- corrupted files
def test_corrupted_prediction_files_name_the_directory(tmp_path):
    for broken in ("prediction.safetensors", "prediction.json"):
        directory = _prediction().save(tmp_path / broken)
        (directory / broken).write_bytes(GARBAGE)
        with pytest.raises(ValueError, match=r"`directory` .* does not hold a readable prediction"):
            Prediction.load(directory)


def test_corrupted_or_missing_statistics_file_names_the_path(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(GARBAGE)
    for path in (tmp_path / "m.safetensors", tmp_path / "missing.safetensors"):
        with pytest.raises(ValueError, match=r"`path` .* is not a readable safetensors file"):
            LatentMoments.load(path)


def test_corrupted_tracker_state_names_the_directory(tmp_path):
    save_tracker_state({"history": [{"step": 1.0}], "rows": torch.ones(2)}, tmp_path)
    assert load_tracker_state(tmp_path)["history"] == [{"step": 1.0}]
    (tmp_path / "tracker.safetensors").write_bytes(GARBAGE)
    with pytest.raises(ValueError, match=r"`directory` .* readable tracker state"):
        load_tracker_state(tmp_path)


@pytest.mark.parametrize("broken", ["sae_weights.safetensors", "cfg.json"])
def test_corrupted_sae_directory_names_the_argument(tmp_path, tiny_sae, broken):
    from sts_lightning.model.sae import load_sae

    tiny_sae.save_model(tmp_path)
    (tmp_path / broken).write_bytes(GARBAGE)
    with pytest.raises(ValueError, match=r"`sae`=.* unreadable or corrupted sae-lens SAE"):
        load_sae(tmp_path)


def test_corrupted_sae_cache_entry_is_retrained_not_used(tmp_path, caplog):
    from sts_lightning.model.sae_training import SAETrainConfig, sae_cache_path, train_sae

    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(600, 8, generator=gen) + 1.0
    cfg = SAETrainConfig(
        d_sae=16, k=2, batch_size=32, training_tokens=32 * 12, lr_warm_up_steps=1,
        lr_decay_steps=2, n_eval_rows=50, eval_every=100,
    )  # fmt: skip
    first = train_sae(rows, cfg=cfg, d_in=8, cache_dir=tmp_path, cache_key="k").W_enc.clone()
    entry = sae_cache_path(tmp_path, "k", cfg, 8)
    (entry / "sae_weights.safetensors").write_bytes(GARBAGE)  # a bad disk, a foreign writer
    with caplog.at_level("WARNING", logger="sts_lightning"):
        again = train_sae(rows, cfg=cfg, d_in=8, cache_dir=tmp_path, cache_key="k")
    assert "unreadable, retraining" in caplog.text
    torch.testing.assert_close(again.W_enc, first)  # seeded: the same SAE, rebuilt
    assert (entry / "sae_weights.safetensors").read_bytes() != GARBAGE


# ----------------------------------------------------------------------------- recipes
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: [unclosed\npredict: {k: 3\n", "Problems parsing config"),
        ("predict:\n  train_tokens: 0\n", "`train_tokens` must be a positive int, got 0"),
        ("sae_tokens: -10\n", "`sae_tokens` must be a positive int, got -10"),
        ("domains: []\n", "`domains` and `domain_files` are both empty"),
        ("predict:\n  layer: -1\n", "`layer` must be an int >= 0 or None, got -1"),
    ],
    ids=["malformed-yaml", "zero-budget", "negative-budget", "no-domains", "negative-layer"],
)
def test_predict_recipe_errors_name_the_key(tmp_path, capsys, text, message):
    from sts_lightning.forecast.job import load_job

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises((SystemExit, ValueError)) as err:
        load_job(recipe)
    shown = str(err.value) + capsys.readouterr().err
    if message is not None:
        assert message in shown
    assert "Traceback" not in shown


def test_missing_recipe_file_is_named(tmp_path, capsys):
    from sts_lightning.forecast.job import load_job

    with pytest.raises(SystemExit):
        load_job(tmp_path / "nope.yaml")
    assert "File does not exist" in capsys.readouterr().err


def test_lightning_recipe_malformed_yaml(tmp_path, capsys):
    from sts_lightning.cli.fit import parse_config

    recipe = tmp_path / "fit.yaml"
    recipe.write_text("trainer:\n  max_steps: [3\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(recipe)])
    assert "Problems parsing config" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the callback
def _fit_callback(tmp_path, tiny_llama, tiny_tokenizer, callback, with_tokenizer=True):
    import copy

    from lightning.pytorch import Trainer

    from tests.callbacks.test_sts import TEXTS, UserModule, _fit, _loader

    if with_tokenizer:
        return _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=1)
    module = UserModule(copy.deepcopy(tiny_llama), None)
    trainer = Trainer(
        max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, _loader(tiny_tokenizer, TEXTS["arith"]))
    return trainer, module


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("k-above-d_sae", ValueError, r"`config.k`=65 exceeds the SAE's d_sae=64"),
        ("sae-of-wrong-type", TypeError, "`sae` must be a sae-lens id"),
        ("no-tokenizer", ValueError, "STSCallback needs a tokenizer"),
        ("forecast-of-other-d_sae", ValueError, r"`forecast` has d_sae=32, the SAE has 64"),
    ],
)
def test_callback_misconfiguration_fails_before_step_one(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae, case, error, match
):
    from sts_lightning.callbacks import STSCallback

    texts = {n: [f"{n} text number {i}." for i in range(6)] for n in ("a", "b", "c")}
    kwargs = {
        "train_examples": [Example(f"What is {i} + 1?", str(i + 1)) for i in range(6)],
        "predict_config": PredictConfig(
            domain_demos=0, train_tokens=20, domain_tokens=20, progress=False
        ),
    }
    sae = {"sae-of-wrong-type": 3}.get(case, tiny_sae)
    kwargs |= {"k": 65} if case == "k-above-d_sae" else {"k": 4}
    if case == "forecast-of-other-d_sae":
        kwargs["forecast"] = _prediction(d_sae=32)
    callback = STSCallback(sae, domains=texts, **kwargs)
    with pytest.raises(error, match=match):
        _fit_callback(tmp_path, tiny_llama, tiny_tokenizer, callback, case != "no-tokenizer")


def test_callback_forecast_path_that_is_not_a_forecast(tmp_path, tiny_sae):
    from sts_lightning.callbacks import STSCallback

    with pytest.raises(ValueError, match=r"`directory` .* does not hold a readable prediction"):
        STSCallback(tiny_sae, domains=["law"], forecast=str(tmp_path / "nothing-here"))

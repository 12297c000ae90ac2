"""One resolution of a run's inputs: device, dtype, layer, ``k``, pad id, callback arguments."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.model import run_inputs
from sts_lightning.model.sae_source import collect_activations
from sts_lightning.monitor.settings import tracking_configs
from sts_lightning.monitor.tracker import TrackerConfig


def test_pad_id_is_the_pad_token_else_eos(tiny_tokenizer):
    assert run_inputs.resolve_pad_id(tiny_tokenizer) == tiny_tokenizer.pad_token_id
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    with pytest.warns(UserWarning, match="padding with the eos token"):
        assert run_inputs.resolve_pad_id(tok) == tok.eos_token_id
    tok.eos_token = None
    with pytest.raises(ValueError, match="neither a pad nor an eos token"):
        run_inputs.resolve_pad_id(tok)


def test_sae_data_pads_like_the_engine(tiny_llama, tiny_tokenizer):
    """Without a pad token, SAE rows are collected with EOS padding, never id 0 by accident."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    texts = [Example(f"Sentence number {i} is short.") for i in range(4)]
    with pytest.warns(UserWarning, match="padding with the eos token"):
        rows = collect_activations(tiny_llama, tok, texts, layer=1, n_tokens=20, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        padded = collect_activations(
            tiny_llama, tiny_tokenizer, texts, layer=1, n_tokens=20, batch_size=2
        )
    torch.testing.assert_close(rows, padded)  # padding is masked: the same rows either way


@pytest.mark.parametrize(
    ("value", "expected"),
    [("float32", torch.float32), ("bf16", torch.bfloat16), ("auto", "auto")],
)
def test_dtype_names(value, expected):
    assert run_inputs.resolve_dtype(value) == expected
    assert run_inputs.resolve_dtype(torch.float16) is torch.float16


def test_unknown_dtype_names_the_field():
    with pytest.raises(ValueError, match=r"`dtype` must be one of .*got 'int8'"):
        run_inputs.resolve_dtype("int8")


def test_layer_given_read_from_the_sae_or_refused(tiny_llama, tiny_sae):
    assert run_inputs.resolve_layer(tiny_sae, 0) == 0
    assert run_inputs.resolve_layer(tiny_sae, None) == 1  # blocks.1.hook_resid_post
    assert run_inputs.resolve_sae_layer(tiny_llama, tiny_sae, None, "config") == 1
    bare = copy.deepcopy(tiny_sae)
    bare.cfg.metadata.hook_name = None
    with pytest.raises(ValueError, match=r"`predict\.layer` is None and the SAE's metadata"):
        run_inputs.resolve_sae_layer(tiny_llama, bare, None, "predict")
    with pytest.raises(ValueError, match="trained on the residual stream after layer 1"):
        run_inputs.resolve_sae_layer(tiny_llama, tiny_sae, 0, "predict")


def test_k_must_fit_the_sae(tiny_sae):
    run_inputs.check_k(64, tiny_sae)
    with pytest.raises(ValueError, match=r"`predict.k`=65 exceeds the SAE's d_sae=64"):
        run_inputs.check_k(65, tiny_sae, "predict.k")


def test_callback_k_and_layer_default_to_the_forecasts():
    given = PredictConfig(k=7, layer=3, progress=False)
    pcfg, tcfg = tracking_configs(given, None, k=None, layer=None, every_n_steps=5)
    assert (pcfg.k, pcfg.layer, tcfg.every_n_steps) == (7, 3, 5)
    pcfg, _ = tracking_configs(given, TrackerConfig(), k=9, layer=2, every_n_steps=5)
    assert (pcfg.k, pcfg.layer) == (9, 2)
    assert (given.k, given.layer) == (7, 3)  # the argument is left untouched
    pcfg, _ = tracking_configs({"k": 11}, None, k=None, layer=None, every_n_steps=1)
    assert (pcfg.k, pcfg.layer, pcfg.progress) == (11, None, False)
    pcfg, _ = tracking_configs(None, None, k=None, layer=None, every_n_steps=1)
    assert pcfg.k == PredictConfig().k


def test_both_callbacks_keep_the_forecasts_k_and_layer(tiny_sae):
    from sts_lightning.callbacks import STSCallback
    from sts_lightning.hf import STSTrainerCallback

    given = PredictConfig(k=7, layer=1, progress=False)
    domains = {"a": ["x y z"] * 4}
    lightning = STSCallback(tiny_sae, domains=domains, predict_config=given)
    hf = STSTrainerCallback(sae=tiny_sae, domains=domains, predict_config=given)
    assert (lightning._predict_config.k, lightning._predict_config.layer) == (7, 1)
    assert (hf.predict_config.k, hf.predict_config.layer) == (7, 1)

"""SAE health: a useless SAE warns at train start; the SAE's fit to the trained model is logged.

The oracle SAE reconstructs exactly (latents ReLU(x) and ReLU(-x), decoder [I; -I]): FVU 0 on
any rows. A random sae-lens SAE explains nothing (FVU far above 1).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from sts_lightning.monitor.health import SAEHealth
from sts_lightning.monitor.tracker import TrackerConfig
from tests.callbacks.test_sts import _callback, _fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _exact_sae(d=32):
    """A StandardSAE with x̂ = ReLU(x) − ReLU(−x) = x: FVU 0, no dead latent."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    return sae.eval().requires_grad_(False)


def _random_sae(seed):
    """A random SAE as a user might pick by mistake: other seed, no tuning."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    return sae.eval().requires_grad_(False)


def _fvu(sae, rows):
    """FVU by its definition, independently of ReconstructionQuality."""
    x = rows.double()
    x_hat = sae.decode(sae.encode(rows)).double()
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def _sts_warnings(record):
    return [str(w.message) for w in record if str(w.message).startswith("STS: ")]


def test_a_random_sae_warns_at_train_start(tmp_path, tiny_llama, tiny_tokenizer):
    callback = _callback(_random_sae(seed=7), every=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer, _ = _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=2)
    found = _sts_warnings(record)
    assert trainer.global_step == 2  # a warning, not an error
    fvu = callback.tracker.prediction.quality["fvu"]
    assert fvu > 1.0 and any(f"FVU {fvu:.2f} > sae_max_fvu=0.5" in m for m in found)


def test_an_exact_sae_does_not_warn_and_its_fit_is_logged(tmp_path, tiny_llama, tiny_tokenizer):
    sae = _exact_sae()
    callback = _callback(sae, every=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=4)
    assert _sts_warnings(record) == []
    tracker = callback.tracker
    assert tracker.prediction.quality["fvu"] == pytest.approx(0.0, abs=1e-6)
    last = tracker.history[-1]
    assert last["sts/sae/fvu"] == pytest.approx(_fvu(sae, tracker._now_rows), abs=1e-6)
    # L0 oracle: each row fires one latent per nonzero coordinate (x_i > 0 or x_i < 0).
    assert last["sts/sae/l0"] == pytest.approx(
        float((tracker._now_rows != 0).sum(1).double().mean())
    )


def test_sae_fit_on_the_current_model_is_measured_on_the_probe(
    tmp_path, tiny_llama, tiny_tokenizer, tiny_sae
):
    callback = _callback(tiny_sae, every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=2)
    tracker = callback.tracker
    assert tracker.history[-1]["sts/sae/fvu"] == pytest.approx(
        _fvu(tiny_sae, tracker._now_rows), rel=1e-5
    )
    assert tracker.health.base_fvu == pytest.approx(_fvu(tiny_sae, tracker.probe["rows"]), rel=1e-5)


def test_drift_warns_once_when_fvu_doubles():
    # An SAE that reconstructs only the first 16 of 32 dimensions: exact on rows living there.
    sae = _exact_sae()
    with torch.no_grad():
        sae.W_enc[16:] = 0.0
    g = torch.Generator().manual_seed(0)
    base = torch.cat([torch.randn(200, 16, generator=g), torch.zeros(200, 16)], dim=1)
    health = SAEHealth(max_fvu=0.5, max_dead=0.9)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        small = base + 0.01 * torch.randn(200, 32, generator=g)  # FVU ≈ 1e-4: fine
        assert health.measure(sae, base, small)["sts/sae/fvu"] < 0.1
        assert _sts_warnings(record) == []
        moved = base + torch.cat([torch.zeros(200, 16), torch.randn(200, 16, generator=g)], 1)
        out = health.measure(sae, base, moved)  # half the variance now outside the SAE
        assert out["sts/sae/fvu"] == pytest.approx(_fvu(sae, moved), rel=1e-6)
        health.measure(sae, base, moved)
    found = _sts_warnings(record)
    assert len(found) == 1 and "no longer fits the trained model" in found[0]


def test_start_check_thresholds_are_config_fields():
    health = SAEHealth(max_fvu=0.5, max_dead=0.9)
    with pytest.warns(UserWarning, match="never fire"):
        found = health.check_start({"fvu": 0.1, "dead_fraction": 0.95, "l0": 3.0}, layer=1)
    assert len(found) == 1
    assert SAEHealth(0.5, 0.9).check_start({"fvu": 0.4, "dead_fraction": 0.5}, layer=1) == []
    with pytest.raises(ValueError, match="sae_max_fvu"):
        TrackerConfig(sae_max_fvu=0)
    assert copy.copy(TrackerConfig()).sae_max_fvu == 0.5

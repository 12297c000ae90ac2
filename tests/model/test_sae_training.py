"""Tests for SAE training (``model/sae_training.py`` and its parts): scale folding, the cache."""

from __future__ import annotations

import logging

import pytest
import torch

from sts_lightning.model.sae import evaluate_sae, load_sae, sae_layer
from sts_lightning.model.sae_training import SAETrainConfig, prepare_rows, sae_cache_path, train_sae

D_IN, D_SAE, K = 16, 64, 4
N_ROWS = 1200


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: thread hand-offs cost more than the work, worst on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sparse_rows() -> torch.Tensor:
    """Rows built from 3 of 32 random directions plus an offset: an SAE can learn them."""
    gen = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(32, D_IN, generator=gen), dim=1)
    codes = torch.rand(N_ROWS, 32, generator=gen) * 5
    codes *= torch.rand(N_ROWS, 32, generator=gen).argsort(dim=1) < 3  # 3 active per row
    return codes @ atoms + 2.0  # (N_ROWS, D_IN)


def _cfg(**overrides) -> SAETrainConfig:
    base = dict(
        d_sae=D_SAE,
        k=K,
        batch_size=64,
        training_tokens=64 * 300,
        lr=3e-3,
        lr_warm_up_steps=5,
        lr_decay_steps=30,
        dead_feature_window=20,
        n_eval_rows=100,
        eval_every=100,
    )
    return SAETrainConfig(**{**base, **overrides})


@pytest.mark.parametrize(
    ("architecture", "rescale"), [("topk", True), ("topk", False), ("standard", None)]
)
def test_folded_scale_takes_raw_activations(architecture, rescale):
    import sae_lens

    torch.manual_seed(0)
    if architecture == "topk":
        cfg = sae_lens.TopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=rescale
        )
        sae = sae_lens.TopKTrainingSAE(cfg)
    else:
        sae = sae_lens.StandardTrainingSAE(
            sae_lens.StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE)
        )
    with torch.no_grad():  # a non-trivial decoder bias and decoder norms
        sae.b_dec.normal_()
        sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)
    raw, s = torch.randn(8, D_IN) * 30, 0.17
    with torch.no_grad():
        latents_scaled = sae.encode(s * raw)
        recon_scaled = sae.decode(latents_scaled)
        sae.fold_activation_norm_scaling_factor(s)
        latents_raw = sae.encode(raw)
        recon_raw = sae.decode(latents_raw)
    # With decoder-norm rescaling (sae-lens' TopK default) latents come out in raw units, i.e.
    # divided by s; the active set is the same either way.
    expected = latents_scaled / s if rescale else latents_scaled
    torch.testing.assert_close(latents_raw, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(recon_raw, recon_scaled / s, rtol=1e-4, atol=1e-4)


def test_train_sae_reduces_fvu(sparse_rows, caplog):
    records = []
    with caplog.at_level(logging.INFO, logger="sts_lightning"):
        sae = train_sae(sparse_rows, cfg=_cfg(), d_in=D_IN, layer=2, on_eval=records.append)
    assert [r["step"] for r in records] == [0, 100, 200, 300]
    untrained, trained = records[0]["fvu"], records[-1]["fvu"]
    assert trained < 0.5 * untrained and trained < 0.3, (untrained, trained)
    assert "held-out FVU" in caplog.text
    assert sae_layer(sae) == 2 and not sae.training
    assert not any(p.requires_grad for p in sae.parameters())
    # The returned SAE takes raw rows: its FVU on them is what training reached.
    assert evaluate_sae(sae, sparse_rows)["fvu"] == pytest.approx(trained, abs=0.1)
    assert sae.cfg.metadata.eval_fvu == pytest.approx(trained, rel=1e-3)


def test_train_sae_standard_architecture(sparse_rows):
    records = []
    cfg = _cfg(architecture="standard", l1_coefficient=0.01)
    sae = train_sae(sparse_rows, cfg=cfg, d_in=D_IN, on_eval=records.append)
    assert type(sae).__name__ == "StandardSAE"
    assert records[-1]["fvu"] < 0.5 * records[0]["fvu"]


def test_cache_hit_skips_training_and_data(sparse_rows, tmp_path, monkeypatch):
    import sae_lens

    cfg = _cfg(training_tokens=64 * 40, lr_decay_steps=10)
    first = train_sae(sparse_rows, cfg=cfg, d_in=D_IN, cache_dir=tmp_path, cache_key="k", layer=1)
    path = sae_cache_path(tmp_path, "k", cfg, D_IN, layer=1)
    assert path.is_dir() and not list(tmp_path.glob(".tmp-*"))

    class Boom:
        def __init__(self, *args, **kwargs):
            raise AssertionError("trained again despite a cache hit")

    def unread_data():
        raise AssertionError("activations consumed despite a cache hit")
        yield  # pragma: no cover

    monkeypatch.setattr(sae_lens, "SAETrainer", Boom)
    again = train_sae(unread_data(), cfg=cfg, d_in=D_IN, cache_dir=tmp_path, cache_key="k", layer=1)
    torch.testing.assert_close(again.W_enc, first.W_enc)
    assert sae_layer(again) == 1
    # Another key, config or layer is another entry.
    assert sae_cache_path(tmp_path, "k2", cfg, D_IN, 1) != path
    assert sae_cache_path(tmp_path, "k", _cfg(seed=1), D_IN, 1) != sae_cache_path(
        tmp_path, "k", _cfg(), D_IN, 1
    )
    assert sae_cache_path(tmp_path, "k", cfg, D_IN, 2) != path
    assert sae_cache_path(tmp_path, "k", _cfg(eval_every=7), D_IN, 1) == sae_cache_path(
        tmp_path, "k", _cfg(), D_IN, 1
    )  # logging frequency does not change the weights
    with pytest.raises(AssertionError, match="trained again"):
        train_sae(sparse_rows, cfg=cfg, d_in=D_IN, cache_dir=tmp_path, cache_key="k", layer=3)


def test_train_sae_is_deterministic_and_leaves_global_rng_alone(sparse_rows):
    cfg = _cfg(training_tokens=64 * 20, lr_decay_steps=5)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = train_sae(sparse_rows, cfg=cfg, d_in=D_IN)
    assert torch.equal(torch.rand(1), expected_next)
    second = train_sae(sparse_rows, cfg=cfg, d_in=D_IN)
    torch.testing.assert_close(first.W_enc, second.W_enc, rtol=0, atol=0)
    third = train_sae(
        sparse_rows, cfg=_cfg(training_tokens=64 * 20, lr_decay_steps=5, seed=1), d_in=D_IN
    )
    assert not torch.equal(first.W_enc, third.W_enc)


def test_partial_cache_is_ignored(sparse_rows, tmp_path):
    cfg = _cfg(training_tokens=64 * 40, lr_decay_steps=10)
    path = sae_cache_path(tmp_path, "k", cfg, D_IN)
    # A crashed writer's temp dir, and an entry missing its weights: neither may be loaded.
    partial_tmp = tmp_path / f".tmp-{path.name}-deadbeef"
    partial_tmp.mkdir(parents=True)
    (partial_tmp / "cfg.json").write_text("{}")
    path.mkdir()
    (path / "cfg.json").write_text("{}")
    sae = train_sae(sparse_rows, cfg=cfg, d_in=D_IN, cache_dir=tmp_path, cache_key="k")
    assert (path / "sae_weights.safetensors").is_file()
    torch.testing.assert_close(load_sae(path).W_enc, sae.W_enc)


def test_prepare_rows_drops_massive_shuffles_and_scales(sparse_rows, caplog):
    rows = sparse_rows.clone()
    rows[::100] *= 1000  # 12 massive-activation rows
    cfg = _cfg(max_norm=100.0)
    with caplog.at_level(logging.INFO, logger="sts_lightning"):
        train_rows, eval_rows, scale = prepare_rows(rows.split(256), cfg, D_IN)
    assert "dropped 12" in caplog.text
    assert train_rows.shape[0] + eval_rows.shape[0] == N_ROWS - 12 and eval_rows.shape[0] == 100
    assert train_rows.norm(dim=1).mean() == pytest.approx(D_IN**0.5, rel=1e-5)
    assert eval_rows.norm(dim=1).max() < 100  # held-out rows stay raw
    assert scale == pytest.approx(D_IN**0.5 / float((train_rows / scale).norm(dim=1).mean()))


def test_errors(sparse_rows, tmp_path):
    with pytest.raises(ValueError, match="`architecture` must be"):
        SAETrainConfig(architecture="gated")
    with pytest.raises(ValueError, match="`k` must be a positive int"):
        SAETrainConfig(k=0)
    with pytest.raises(ValueError, match="`lr_warm_up_steps` \\+ `lr_decay_steps`"):
        SAETrainConfig(training_tokens=2048 * 10)
    with pytest.raises(ValueError, match="`cache_dir` and `cache_key` must be given together"):
        train_sae(sparse_rows, cfg=_cfg(), d_in=D_IN, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"`activations` must be rows \(n, d_in=16\)"):
        train_sae(sparse_rows[:, :8], cfg=_cfg(), d_in=D_IN)
    with pytest.raises(ValueError, match="usable training rows"):
        train_sae(sparse_rows[:60], cfg=_cfg(), d_in=D_IN)

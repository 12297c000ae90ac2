"""Tests for the SAE: loading, checks, encoding, reconstruction quality (``model/sae*.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sts_lightning.model import sae as sae_facade
from sts_lightning.model.rows import keep_rows
from sts_lightning.model.sae import (
    ReconstructionQuality,
    check_sae,
    encode,
    evaluate_sae,
    load_sae,
    resid_post_hook,
    sae_d_in,
    sae_d_sae,
    sae_layer,
)

D_IN, D_SAE, K = 16, 64, 4


def _tiny_topk(hook_name: str | None = "blocks.1.hook_resid_post"):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    return sae


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    """A sae-lens directory written by ``save_model`` (hook: after layer 1)."""
    path = tmp_path_factory.mktemp("sae") / "tiny"
    _tiny_topk().save_model(path)
    return path


def _hooked(hook_name, d_in=D_IN):
    return SimpleNamespace(
        cfg=SimpleNamespace(d_in=d_in, d_sae=D_SAE, metadata=SimpleNamespace(hook_name=hook_name))
    )


def _frozen(sae) -> bool:
    return not sae.training and not any(p.requires_grad for p in sae.parameters())


def test_load_sae_from_directory(sae_dir):
    from sae_lens import TopKSAE

    sae = load_sae(sae_dir)
    assert isinstance(sae, TopKSAE) and _frozen(sae)
    assert (sae_layer(sae), sae_d_in(sae), sae_d_sae(sae)) == (1, D_IN, D_SAE)
    assert isinstance(load_sae(str(sae_dir), device="cpu"), TopKSAE)  # str path, explicit device


def test_load_sae_from_object_returns_it_frozen():
    sae = _tiny_topk()
    assert any(p.requires_grad for p in sae.parameters())
    assert load_sae(sae) is sae and _frozen(sae)


@pytest.mark.parametrize(
    ("sae_id", "release", "inner_id"),
    [
        (
            "gpt2-small-res-jb/blocks.8.hook_resid_pre",
            "gpt2-small-res-jb",
            "blocks.8.hook_resid_pre",
        ),
        # sae ids may contain "/", released names do not
        (
            "gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82",
            "gemma-scope-2b-pt-res",
            "layer_12/width_16k/average_l0_82",
        ),
        # not a named release: a hub repo "owner/name" then the id
        (
            "someone/their-saes/blocks.3.hook_resid_post",
            "someone/their-saes",
            "blocks.3.hook_resid_post",
        ),
    ],
)
def test_load_sae_id_calls_from_pretrained(monkeypatch, sae_dir, sae_id, release, inner_id):
    from sae_lens import SAE

    calls = []

    def fake_from_pretrained(release, sae_id, device="cpu", **kwargs):
        calls.append((release, sae_id, device))
        return SAE.load_from_disk(sae_dir, device=device)

    monkeypatch.setattr(SAE, "from_pretrained", fake_from_pretrained)
    sae = load_sae(sae_id)
    assert calls == [(release, inner_id, "cpu")]
    assert _frozen(sae) and sae_d_sae(sae) == D_SAE


def test_load_sae_id_offline_raises_value_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A real release: sae-lens resolves it, then the hub download fails offline.
    with pytest.raises(ValueError, match=r"`sae`='gpt2-small-res-jb/blocks.8.hook_resid_pre'"):
        load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")
    with pytest.raises(ValueError, match=r"`sae`='no-such-release/x'.*not found"):
        load_sae("no-such-release/x")


def test_load_sae_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"`sae`=.*not a sae-lens directory"):
        load_sae(tmp_path)  # exists, but empty
    with pytest.raises(ValueError, match=r"`sae`='missing' is neither"):
        load_sae("missing")
    with pytest.raises(ValueError, match=r"`sae`='\./no/such/dir' is neither"):
        load_sae("./no/such/dir")  # path-like: never read as a hub id
    with pytest.raises(TypeError, match="`sae` must be"):
        load_sae(3)


def test_sae_layer_reads_resid_hooks_only():
    assert sae_layer(_hooked("blocks.12.hook_resid_post")) == 12
    assert sae_layer(_hooked("blocks.12.hook_resid_pre")) == 11  # input of 12 = output of 11
    assert sae_layer(_hooked(None)) is None
    assert sae_layer(object()) is None
    for hook in ("blocks.12.hook_mlp_out", "blocks.12.hook_resid_mid", "blocks.0.hook_resid_pre"):
        with pytest.raises(ValueError, match="`sae` was trained on hook"):
            sae_layer(_hooked(hook))
    assert resid_post_hook(3) == "blocks.3.hook_resid_post"


def test_check_sae():
    sae = _hooked("blocks.1.hook_resid_post")
    check_sae(sae, d_model=D_IN, n_layers=3, layer=1)
    check_sae(_hooked(None), d_model=D_IN, n_layers=3, layer=2)  # no metadata: no layer check
    with pytest.raises(ValueError, match=r"`sae` expects .*d_in=16.*d_model=32"):
        check_sae(sae, d_model=32, n_layers=3, layer=1)
    with pytest.raises(ValueError, match=r"`layer` must be an int in \[0, n_layers=3\)"):
        check_sae(sae, d_model=D_IN, n_layers=3, layer=3)
    with pytest.raises(ValueError, match=r"after layer 1 .*`layer`=2"):
        check_sae(sae, d_model=D_IN, n_layers=3, layer=2)


def test_encode_float32_no_grad_any_input_dtype(sae_dir):
    sae = load_sae(sae_dir)
    x = torch.randn(5, D_IN)
    latents = encode(sae, x.to(torch.bfloat16))
    assert latents.shape == (5, D_SAE) and latents.dtype == torch.float32
    assert not latents.requires_grad
    assert ((latents != 0).sum(dim=1) <= K).all()
    torch.testing.assert_close(encode(sae, x), sae.encode(x).detach())
    with pytest.raises(ValueError, match=r"`x` must have shape \(n_tokens, d_in=16\)"):
        encode(sae, torch.randn(5, 8))


def test_keep_rows():
    x = torch.tensor([[3.0, 4.0], [300.0, 400.0], [float("inf"), 0.0]], dtype=torch.float16)
    assert keep_rows(x, 500.0).tolist() == [True, True, False]
    assert keep_rows(x.float().reshape(3, 1, 2), 5.0).tolist() == [[True], [False], [False]]
    with pytest.raises(ValueError, match="`max_norm` must be a positive number"):
        keep_rows(x, 0.0)


def _dense_quality(x: np.ndarray, x_hat: np.ndarray, latents: np.ndarray) -> dict[str, float]:
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    fired = latents != 0
    return {"fvu": fvu, "l0": fired.sum(axis=1).mean(), "dead_fraction": (~fired.any(0)).mean()}


def test_reconstruction_quality_matches_dense_numpy():
    gen = torch.Generator().manual_seed(0)
    # A large shared offset, like the residual stream's mean: the streaming variance must cope.
    x = torch.randn(300, D_IN, generator=gen) * 3 + 50
    x_hat = x + torch.randn(300, D_IN, generator=gen)
    latents = torch.relu(torch.randn(300, D_SAE, generator=gen) - 1.5)
    latents[:, :5] = 0  # five dead latents
    metric = ReconstructionQuality(D_IN, D_SAE)
    for idx in torch.tensor_split(torch.arange(300), [1, 100, 170]):  # uneven batches
        metric.update(x[idx], x_hat[idx], latents[idx])
    got = metric.compute()
    expected = _dense_quality(x.double().numpy(), x_hat.double().numpy(), latents.numpy())
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, rel=1e-10), key
    assert got["n_tokens"].item() == 300 and got["dead_fraction"].item() >= 5 / D_SAE


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_reconstruction_quality_errors():
    with pytest.raises(ValueError, match="`d_sae` must be a positive int"):
        ReconstructionQuality(D_IN, 0)
    metric = ReconstructionQuality(D_IN, D_SAE)
    with pytest.raises(ValueError, match="has no tokens yet"):
        metric.compute()
    with pytest.raises(ValueError, match="`latents` must have shape"):
        metric.update(torch.zeros(2, D_IN), torch.zeros(2, D_IN), torch.zeros(2, 3))


def test_evaluate_sae_matches_dense_numpy(sae_dir):
    sae = load_sae(sae_dir)
    x = torch.randn(257, D_IN, generator=torch.Generator().manual_seed(1))
    latents = sae.encode(x)
    expected = _dense_quality(x.numpy(), sae.decode(latents).numpy(), latents.numpy())
    got = evaluate_sae(sae, x, batch_size=100)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


def test_sae_module_keeps_every_public_name():
    """Callers import all SAE helpers from ``sts_lightning.model.sae``; the split keeps that."""
    moved = {"load_sae": load_sae, "encode": encode, "sae_d_in": sae_d_in, "sae_d_sae": sae_d_sae}
    moved |= {"ReconstructionQuality": ReconstructionQuality, "evaluate_sae": evaluate_sae}
    assert all(getattr(sae_facade, name) is obj for name, obj in moved.items())
    assert set(moved) <= set(sae_facade.__all__)

"""Streaming statistics equal the functional core on the concatenated rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sts_lightning import functional as F
from sts_lightning.stats import LatentMoments, PairedShift

N, D = 700, 96


def _rows(seed, n=N, d=D, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, d, generator=g) - 0.3).to(dtype)


def _feed(stats, n_batches, *tensors):
    for chunk in zip(*(t.tensor_split(n_batches) for t in tensors), strict=True):
        stats.update(*chunk)
    return stats


@pytest.mark.parametrize("n_batches", [1, 7, 100])
def test_moments_equal_functional(n_batches):
    feats = _rows(0)
    delta = torch.randn(D, generator=torch.Generator().manual_seed(1))
    lat = torch.randperm(D, generator=torch.Generator().manual_seed(2))[:20]
    m = _feed(LatentMoments(D), n_batches, feats)
    torch.testing.assert_close(m.sts_act(lat).float(), F.sts_act(feats, lat), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        m.sts_notebook(lat).float(), F.sts_notebook(feats, lat), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        m.sts_signed(delta, lat).float(), F.sts_signed(feats, delta, lat), rtol=1e-5, atol=1e-7
    )
    assert int(m.compute()["n_tokens"]) == N


@pytest.mark.parametrize("n_batches", [1, 7, 100])
def test_paired_shift_equals_functional(n_batches):
    base, icl = _rows(3), _rows(4)
    lat = torch.arange(0, D, 3)
    s = _feed(PairedShift(D), n_batches, base, icl)
    torch.testing.assert_close(
        s.feature_shift().float(), F.feature_shift(base, icl), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(
        s.signed_shift().float(), F.signed_shift(base, icl), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(s.sts_icl(lat).float(), F.sts_icl(base, icl, lat), rtol=1e-5, atol=0)


def test_bf16_input_is_reduced_in_float32_or_better():
    feats = _rows(5, dtype=torch.bfloat16)
    m = _feed(LatentMoments(D), 13, feats)
    np.testing.assert_allclose(m.compute()["mean"], feats.double().numpy().mean(0), rtol=1e-6)


def test_merge_equals_single_accumulator():
    base, icl = _rows(6), _rows(7)
    chunks = list(zip(base.tensor_split(5), icl.tensor_split(5), strict=True))
    one, a, b = PairedShift(D), PairedShift(D), PairedShift(D)
    for i, chunk in enumerate(chunks):
        one.update(*chunk)
        (a if i < 3 else b).update(*chunk)
    a.merge_state(b)
    torch.testing.assert_close(a.feature_shift(), one.feature_shift(), rtol=1e-12, atol=0)
    m1, m2, m3 = LatentMoments(D), LatentMoments(D), LatentMoments(D)
    for i, rows in enumerate(base.tensor_split(4)):
        m1.update(rows)
        (m2 if i < 1 else m3).update(rows)
    m2.merge_state(m3)
    torch.testing.assert_close(m2.compute()["mean_sq"], m1.compute()["mean_sq"], rtol=1e-12, atol=0)


def test_memory_is_constant_in_tokens():
    # The states are O(d_sae): the same tensors whatever was fed.
    m = LatentMoments(D)
    sizes = []
    for _ in range(3):
        m.update(_rows(8))
        sizes.append(sum(v.numel() for v in m.metric_state.values()))
    assert sizes == [2 * D + 1] * 3


def test_save_load_round_trip(tmp_path):
    s = _feed(PairedShift(D), 3, _rows(9), _rows(10))
    s.save(tmp_path / "shift.safetensors")
    loaded = PairedShift.load(tmp_path / "shift.safetensors")
    assert torch.equal(loaded.feature_shift(), s.feature_shift())
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="PairedShift"):
        LatentMoments.load(tmp_path / "shift.safetensors")


def test_state_dict_round_trip():
    m = _feed(LatentMoments(D), 2, _rows(11))
    m.persistent(True)
    fresh = LatentMoments(D)
    fresh.persistent(True)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.compute()["mean"], m.compute()["mean"])


def test_rejected_batch_leaves_state_untouched():
    m = LatentMoments(4)
    m.update(torch.ones(2, 4))
    bad = torch.ones(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.update(bad)
    assert int(m.n_tokens) == 2 and torch.equal(m.sum, torch.full((4,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: LatentMoments(0), ValueError, "d_sae"),
        (lambda: LatentMoments(4).update(torch.ones(2, 5)), ValueError, "d_sae=4"),
        (
            lambda: LatentMoments(4).update(torch.ones(2, 4, dtype=torch.int64)),
            TypeError,
            "floating",
        ),
        (lambda: PairedShift(4).update(torch.ones(2, 4), torch.ones(3, 4)), ValueError, "matching"),
        (lambda: LatentMoments(4).compute(), ValueError, "no tokens"),
        (
            lambda: PairedShift(4).update(torch.ones(1, 4), torch.full((1, 4), float("inf"))),
            ValueError,
            "NaN or inf",
        ),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()

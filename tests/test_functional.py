"""The functional core against a straightforward numpy re-implementation of METHOD.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sts_lightning import functional as F

SHAPES = [(1, 1), (5, 3), (64, 17), (300, 128)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _rows(shape, dtype, seed, sparse=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if sparse:  # SAE latents are non-negative and mostly zero
        x = torch.relu(x - 0.5)
    return x.to(dtype)


def _np(x: torch.Tensor) -> np.ndarray:
    # The oracle sees exactly the values the function sees (bf16 rounding included), in float64.
    return x.double().numpy()


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype != torch.float64 else dict(rtol=1e-12, atol=1e-12)


def _latents(d, k, seed):
    return torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:k]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_feature_shift_and_signed_shift_match_numpy(shape, dtype):
    base, shifted = _rows(shape, dtype, 0), _rows(shape, dtype, 1)
    diff = _np(shifted) - _np(base)
    np.testing.assert_allclose(F.feature_shift(base, shifted), (diff**2).mean(0), **_tol(dtype))
    np.testing.assert_allclose(F.signed_shift(base, shifted), diff.mean(0), **_tol(dtype))
    assert F.feature_shift(base, shifted).dtype == torch.promote_types(dtype, torch.float32)


@pytest.mark.parametrize("d", [1, 7, 100])
def test_top_shifted_all_k(d):
    shift = torch.rand(d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    for k in range(1, d + 1):
        got = F.top_shifted(shift, k)
        assert got.dtype == torch.long and got.shape == (k,)
        np.testing.assert_array_equal(got.numpy(), np.argsort(-shift.numpy(), kind="stable")[:k])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_match_numpy(shape, dtype):
    n, d = shape
    feats, icl = _rows(shape, dtype, 2), _rows(shape, dtype, 3)
    delta = torch.randn(d, generator=torch.Generator().manual_seed(4)).to(dtype)
    for k in sorted({1, max(1, d // 2), d}):
        lat = _latents(d, k, seed=k)
        idx = lat.numpy()
        h, h_icl = _np(feats), _np(icl)
        act = np.mean([sum(h[t, j] for j in idx) for t in range(n)])
        icl_score = np.mean([sum((h_icl[t, j] - h[t, j]) ** 2 for j in idx) for t in range(n)])
        notebook = np.mean([np.mean(h[:, j] ** 2) for j in idx])
        signed = np.mean([sum(_np(delta)[j] * h[t, j] for j in idx) for t in range(n)])
        np.testing.assert_allclose(F.sts_act(feats, lat), act, **_tol(dtype))
        np.testing.assert_allclose(F.sts_icl(feats, icl, lat), icl_score, **_tol(dtype))
        np.testing.assert_allclose(F.sts_notebook(feats, lat), notebook, **_tol(dtype))
        np.testing.assert_allclose(F.sts_signed(feats, delta, lat), signed, **_tol(dtype))


def _notebook_reference(features: np.ndarray, index: np.ndarray) -> float:
    """The released notebook's step 2 (``features - 0``, squared, token mean, index, mean)."""
    per_latent = np.mean((features - 0.0) ** 2, axis=0)
    return float(np.mean(per_latent[index]))


def test_sts_notebook_reproduces_released_notebook():
    base, icl = _rows((200, 64), torch.float32, 5), _rows((200, 64), torch.float32, 6)
    domain = _rows((150, 64), torch.float32, 7)
    # Notebook step 1 ranks by a token *sum* of squared differences: same order as our mean.
    index = np.argsort(-((_np(icl) - _np(base)) ** 2).sum(0), kind="stable")[:10]
    ours = F.sts_notebook(domain, F.top_shifted(F.feature_shift(base, icl), k=10))
    np.testing.assert_allclose(ours, _notebook_reference(_np(domain), index), rtol=1e-6)


def test_overlap_at_k():
    assert F.overlap_at_k(torch.arange(10), torch.arange(5, 20)) == 5
    assert F.overlap_at_k([1, 2], [3]) == 0
    a, b = _latents(1000, 100, 0), _latents(1000, 100, 1)
    assert F.overlap_at_k(a, b) == len(np.intersect1d(a.numpy(), b.numpy()))


def test_zero_shift_when_views_identical():
    x = _rows((50, 20), torch.float32, 8)
    assert torch.equal(F.feature_shift(x, x), torch.zeros(20))
    assert F.sts_icl(x, x, [0, 1, 2]) == 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: F.feature_shift(torch.ones(3, 4), torch.ones(3, 5)), ValueError, "matching"),
        (lambda: F.feature_shift(torch.ones(4), torch.ones(4)), ValueError, "n_tokens, d_sae"),
        (lambda: F.feature_shift(torch.ones(0, 4), torch.ones(0, 4)), ValueError, "no token"),
        (lambda: F.sts_act(torch.ones(3, 4, dtype=torch.long), [0]), TypeError, "features"),
        (lambda: F.sts_act(torch.full((2, 3), float("nan")), [0]), ValueError, "NaN"),
        (
            lambda: F.sts_icl(torch.ones(2, 3), torch.tensor([[1, 2, float("inf")]] * 2), [0]),
            ValueError,
            "icl",
        ),
        (lambda: F.top_shifted(torch.ones(5), k=0), ValueError, "`k`"),
        (lambda: F.top_shifted(torch.ones(5), k=6), ValueError, "d_sae=5"),
        (lambda: F.top_shifted(torch.ones(5, 1), k=1), TypeError, "shift"),
        (lambda: F.sts_act(torch.ones(2, 3), [3]), ValueError, "latents"),
        (lambda: F.sts_act(torch.ones(2, 3), [1, 1]), ValueError, "repeat"),
        (lambda: F.sts_act(torch.ones(2, 3), []), ValueError, "non-empty"),
        (lambda: F.sts_act(torch.ones(2, 3), torch.tensor([0.0])), TypeError, "integer"),
        (lambda: F.sts_signed(torch.ones(2, 3), torch.ones(2), [0]), ValueError, "shift"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 20),
    d=st.integers(1, 20),
    k=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_properties(n, d, k, seed):
    k = min(k, d)
    base, icl = _rows((n, d), torch.float64, seed), _rows((n, d), torch.float64, seed + 1)
    shift = F.feature_shift(base, icl)
    top = F.top_shifted(shift, k)
    # Δ is non-negative, the top set holds the k largest, and STS_ICL over all latents is the
    # total shift.
    assert (shift >= 0).all()
    assert shift[top].min() >= torch.sort(shift).values[-k]
    np.testing.assert_allclose(F.sts_icl(base, icl, torch.arange(d)), shift.sum(), rtol=1e-10)
    assert F.overlap_at_k(top, top) == k

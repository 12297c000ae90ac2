"""The SAE-based Transferability Score as pure tensor functions.

Read top to bottom, this file is the method of "SAE as a Crystal Ball" (ICLR 2026):

1. ``feature_shift``: how much each SAE latent moves between a base and a shifted view of the
   *same* tokens (the ICL proxy, or the real fine-tuned model): Δ_j = E_t (h'_tj − h_tj)².
2. ``top_shifted``: the set D of the k most shifted latents.
3. Per-domain scores over D: ``sts_act`` (first moment, paper STS_act), ``sts_icl`` (paired
   squared shift, paper STS_ICL), ``sts_notebook`` (second moment averaged over D, the released
   notebook's formula) and ``sts_signed`` (a first-order, signed variant for direction).
4. ``overlap_at_k``: agreement between two latent sets.

Inputs are already-selected token rows ``(n_tokens, d_sae)``; no function keeps state, does I/O
or knows about Lightning. Low-precision inputs (bf16/fp16) are computed in float32; float64
stays float64. The streaming equivalents live in :mod:`sts_lightning.stats`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = [
    "check_latents",
    "check_shift",
    "compute_dtype",
    "feature_shift",
    "first_order_change",
    "match_pair",
    "overlap_at_k",
    "signed_shift",
    "sts_act",
    "sts_icl",
    "sts_notebook",
    "sts_signed",
    "top_shifted",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums are taken in: ``dtype``, promoted to at least float32.

    Example:
        >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    # bf16 sums over thousands of tokens lose most of their digits; never reduce below float32.
    return torch.promote_types(dtype, torch.float32)


def _check_rows(name: str, x: Tensor, d_sae: int | None = None) -> Tensor:
    """Validate a ``(n_tokens, d_sae)`` floating tensor and return it in the compute dtype."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"`{name}` must be a torch.Tensor of shape (n_tokens, d_sae), got {type(x)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating tensor (SAE latents), got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n_tokens, d_sae), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` has no token rows: expected shape (n_tokens >= 1, d_sae)")
    if d_sae is not None and x.shape[1] != d_sae:
        raise ValueError(f"`{name}` must have d_sae = {d_sae} columns, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or inf; expected finite latent activations")
    return x.to(compute_dtype(x.dtype))


def match_pair(base: Tensor, shifted: Tensor, shifted_name: str) -> tuple[Tensor, Tensor]:
    """Check two views ``(n_tokens, d_sae)`` are the same rows; return both in one dtype."""
    if base.shape != shifted.shape:
        raise ValueError(
            f"`base` and `{shifted_name}` must be the same token rows with matching shapes "
            f"(n_tokens, d_sae), got {tuple(base.shape)} and {tuple(shifted.shape)}"
        )
    dtype = torch.promote_types(base.dtype, shifted.dtype)
    return base.to(dtype), shifted.to(dtype)


def _check_pair(base: Tensor, shifted: Tensor, shifted_name: str) -> tuple[Tensor, Tensor]:
    base = _check_rows("base", base)
    shifted = _check_rows(shifted_name, shifted)
    return match_pair(base, shifted, shifted_name)


def check_latents(latents: Tensor | Iterable[int], d_sae: int) -> Tensor:
    """Validate a set of latent indices in ``[0, d_sae)`` and return a LongTensor ``(k,)``."""
    latents = torch.as_tensor(latents if isinstance(latents, Tensor) else list(latents))
    if latents.ndim != 1 or latents.numel() == 0:
        raise ValueError(
            f"`latents` must be a non-empty 1-D index set (k,), got shape {tuple(latents.shape)}"
        )
    if latents.is_floating_point() or latents.dtype == torch.bool:
        raise TypeError(f"`latents` must be integer indices, got dtype {latents.dtype}")
    if latents.min() < 0 or latents.max() >= d_sae:
        raise ValueError(
            f"`latents` must lie in [0, d_sae={d_sae}), got range "
            f"[{int(latents.min())}, {int(latents.max())}]"
        )
    if latents.unique().numel() != latents.numel():
        raise ValueError("`latents` must not repeat an index: D is a set of latents")
    return latents.long()


def check_shift(shift: Tensor, d_sae: int) -> None:
    """Validate a signed per-latent shift δ: a finite floating ``(d_sae,)`` tensor."""
    if not isinstance(shift, Tensor) or shift.shape != (d_sae,):
        raise ValueError(f"`shift` must have shape (d_sae,) = ({d_sae},)")
    if not shift.is_floating_point() or not torch.isfinite(shift).all():
        raise ValueError("`shift` must be a finite floating tensor")


def feature_shift(base: Tensor, shifted: Tensor) -> Tensor:
    """Per-latent mean squared shift Δ_j = mean_t (shifted_tj − base_tj)².

    Args:
        base: Latents of the base view, ``(n_tokens, d_sae)``.
        shifted: Latents of the same tokens under the shifted view (ICL prompt or fine-tuned
            model), ``(n_tokens, d_sae)``.

    Returns:
        Δ, shape ``(d_sae,)``.

    Example:
        >>> base = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
        >>> feature_shift(base, base + torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
        tensor([5., 0.])
    """
    base, shifted = _check_pair(base, shifted, "shifted")
    return (shifted - base).square().mean(dim=0)


def signed_shift(base: Tensor, shifted: Tensor) -> Tensor:
    """Per-latent mean signed shift δ_j = mean_t (shifted_tj − base_tj).

    Args:
        base: ``(n_tokens, d_sae)`` base latents.
        shifted: ``(n_tokens, d_sae)`` latents of the same tokens under the shifted view.

    Returns:
        δ, shape ``(d_sae,)``: positive where the shift raises a latent on average.

    Example:
        >>> signed_shift(torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 0.0]]))
        tensor([ 2., -1.])
    """
    base, shifted = _check_pair(base, shifted, "shifted")
    return (shifted - base).mean(dim=0)


def top_shifted(shift: Tensor, k: int = 100) -> Tensor:
    """Indices of the ``k`` most shifted latents, largest first.

    Args:
        shift: Per-latent shift Δ, ``(d_sae,)``.
        k: Size of the latent set D (paper: 100). ``1 <= k <= d_sae``.

    Returns:
        LongTensor ``(k,)`` sorted by descending shift.

    Example:
        >>> top_shifted(torch.tensor([0.1, 3.0, 2.0, 0.0]), k=2)
        tensor([1, 2])
    """
    if not isinstance(shift, Tensor) or not shift.is_floating_point() or shift.ndim != 1:
        raise TypeError("`shift` must be a floating tensor of shape (d_sae,)")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= shift.numel():
        raise ValueError(f"`k` must be an int in [1, d_sae={shift.numel()}], got {k!r}")
    if not torch.isfinite(shift).all():
        raise ValueError("`shift` contains NaN or inf; expected finite per-latent shifts")
    return torch.topk(shift, k, sorted=True).indices


def sts_act(features: Tensor, latents: Tensor | Iterable[int]) -> Tensor:
    """Paper STS_act: mean over a domain's tokens of Σ_{j∈D} h_j.

    Args:
        features: The domain's latents, ``(n_tokens, d_sae)``.
        latents: The shifted set D, ``(k,)`` indices.

    Returns:
        Scalar tensor.

    Example:
        >>> sts_act(torch.tensor([[1.0, 2.0, 9.0], [3.0, 4.0, 9.0]]), [0, 1])
        tensor(5.)
    """
    features = _check_rows("features", features)
    latents = check_latents(latents, features.shape[1])
    return features[:, latents].sum(dim=1).mean()


def sts_icl(base: Tensor, icl: Tensor, latents: Tensor | Iterable[int]) -> Tensor:
    """Paper STS_ICL: mean over a domain's tokens of Σ_{j∈D} (icl_j − base_j)².

    Args:
        base: The domain's latents without demonstrations, ``(n_tokens, d_sae)``.
        icl: The same tokens with in-domain demonstrations in the prompt, ``(n_tokens, d_sae)``.
        latents: The shifted set D, ``(k,)`` indices.

    Returns:
        Scalar tensor.

    Example:
        >>> sts_icl(torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 5.0], [1.0, 0.0, 5.0]]), [0, 1])
        tensor(3.)
    """
    base, icl = _check_pair(base, icl, "icl")
    latents = check_latents(latents, base.shape[1])
    return (icl[:, latents] - base[:, latents]).square().sum(dim=1).mean()


def sts_notebook(features: Tensor, latents: Tensor | Iterable[int]) -> Tensor:
    """The released notebook's score: mean over j∈D of mean over tokens of h_j².

    Differs from :func:`sts_act` (second moment, averaged rather than summed over D); kept so
    results can be compared with the reference notebook.

    Args:
        features: The domain's latents h, ``(n_tokens, d_sae)``, squared token by token.
        latents: The shifted set D, ``(k,)`` indices, averaged over (not summed).

    Returns:
        Scalar tensor: the mean second moment of D's latents.

    Example:
        >>> sts_notebook(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), [0, 1])
        tensor(3.5000)
    """
    features = _check_rows("features", features)
    latents = check_latents(latents, features.shape[1])
    return features[:, latents].square().mean(dim=0).mean()


def sts_signed(features: Tensor, shift: Tensor, latents: Tensor | Iterable[int]) -> Tensor:
    """Signed STS: mean over a domain's tokens of Σ_{j∈D} δ_j h_j.

    With δ the training set's mean signed shift (:func:`signed_shift`), this is half the
    first-order change of the domain's activation energy Σ_{j∈D} h_j² if every domain token moved
    by δ. Positive: fine-tuning is predicted to *strengthen* the latents the domain relies on;
    negative: to *suppress* them (the interference that precedes forgetting). Its magnitude is
    comparable across domains scored with the same δ; how the sign maps to a gain or a loss on a
    benchmark is an empirical question the experiment measures (sign accuracy).

    Args:
        features: The domain's latents, ``(n_tokens, d_sae)``.
        shift: Signed per-latent shift δ, ``(d_sae,)``.
        latents: The shifted set D, ``(k,)`` indices.

    Returns:
        Scalar tensor.

    Example:
        >>> sts_signed(torch.tensor([[1.0, 2.0, 7.0]]), torch.tensor([0.5, -1.0, 9.0]), [0, 1])
        tensor(-1.5000)
    """
    features = _check_rows("features", features)
    check_shift(shift, features.shape[1])
    latents = check_latents(latents, features.shape[1])
    shift = shift.to(torch.promote_types(shift.dtype, features.dtype))
    return (features[:, latents].to(shift.dtype) @ shift[latents]).mean()


def overlap_at_k(a: Tensor | Iterable[int], b: Tensor | Iterable[int]) -> int:
    """Size of the intersection of two latent index sets (overlap@k when both have k members).

    Example:
        >>> overlap_at_k(torch.tensor([1, 5, 7]), [7, 2, 1])
        2
    """
    set_a = {int(i) for i in (a.flatten().tolist() if isinstance(a, Tensor) else a)}
    set_b = {int(i) for i in (b.flatten().tolist() if isinstance(b, Tensor) else b)}
    return len(set_a & set_b)


def first_order_change(domain_grad: Tensor, train_grad: Tensor, lr: float) -> Tensor:
    """Change of a domain's loss, to first order, after one step ``θ ← θ − lr · g_train``.

    ``L_d(θ − η g_t) ≈ L_d(θ) − η g_d · g_t`` (with randomly projected gradients, an estimate).

    Args:
        domain_grad: The domain loss's gradient ``(k,)``, or one per domain ``(n_domains, k)``.
        train_grad: The training loss's gradient ``(k,)``.
        lr: The step size η.

    Returns:
        The predicted change, scalar or ``(n_domains,)`` (> 0: the loss rises).

    Example:
        >>> first_order_change(torch.tensor([[1.0, 2.0], [0, -1]]), torch.tensor([3.0, 1]), 0.1)
        tensor([-0.5000,  0.1000])
    """
    if train_grad.ndim != 1 or domain_grad.shape[-1] != train_grad.shape[0]:
        raise ValueError(f"`domain_grad` {tuple(domain_grad.shape)}: not (..., k) as `train_grad`")
    dtype = torch.promote_types(domain_grad.dtype, train_grad.dtype)
    return -lr * (domain_grad.to(dtype) @ train_grad.to(dtype))

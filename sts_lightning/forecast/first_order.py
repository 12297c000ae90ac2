"""The first-order control: how one step along the training set's mean gradient would move each
domain's loss, before any training.

A step ``θ ← θ − η g_train`` changes a domain's loss by ``−η · g_domain · g_train`` to first
order (:func:`~sts_lightning.functional.first_order_change`), with ``g`` the gradient of the
mean answer NLL per token over a set's items. This is what a user could compute instead of STS,
so the experiment reports it as a forecast beside STS (``first_order``). The gradients are taken
over a named subset of the parameters (LoRA adapters, the last decoder layer, or name prefixes)
and, as LESS does (Xia et al. 2024), reduced by a seeded random projection to ``dim``
coordinates, so a domain's gradient costs ``dim`` floats to keep: the projection preserves inner
products in expectation, with an error of order ``‖g_d‖ ‖g_t‖ · sqrt(2 / dim)``
(Johnson–Lindenstrauss). Each domain's gradient can also be taken on two disjoint item halves,
which gives the forecast's own split-half reliability.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sts_lightning.data.prompts import Example, encode_example
from sts_lightning.functional import first_order_change

__all__ = ["MeanGradient", "RandomProjection", "first_order_forecast", "mean_answer_gradient"]
__all__ += ["first_order_scores", "gradient_fn", "select_parameters"]

_BLOCK = 4096  # coordinates per block of the projection: memory dim × _BLOCK, seeded per block
_LAYER = re.compile(r"\.(?:layers|h)\.(\d+)\.")


def _layer_of(name: str) -> int | None:
    """The decoder layer index in a parameter name (``model.layers.3.mlp...`` → 3)."""
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def select_parameters(model: torch.nn.Module, which: str | Sequence[str] = "last_layer"):
    """``[(name, parameter)]`` whose gradients the control uses.

    Args:
        model: A causal LM.
        which: ``"lora"`` (parameters named ``lora_``), ``"last_layer"`` (the last decoder
            layer: ``layers.N`` / ``h.N`` with the largest N) or a sequence of name prefixes.

    Raises:
        ValueError: No parameter matches (the message names ``which``).
    """
    named = list(model.named_parameters())
    if which == "lora":
        out = [(n, p) for n, p in named if "lora_" in n]
    elif which == "last_layer":
        layers = [k for n, _ in named if (k := _layer_of(n)) is not None]
        out = [(n, p) for n, p in named if layers and _layer_of(n) == max(layers)]
    elif isinstance(which, str):
        raise ValueError(f"`which` must be 'lora', 'last_layer' or name prefixes, got {which!r}")
    else:
        out = [(n, p) for n, p in named if any(n.startswith(pre) for pre in which)]
    if not out:
        raise ValueError(f"`which`={which!r} selects no parameter of the model")
    return out


@dataclass(frozen=True)
class RandomProjection:
    """A seeded random ``(dim, n)`` projection applied block by block, never stored.

    Column block ``b`` is drawn from a generator seeded by ``(seed, b)``, so the projection of a
    vector does not depend on how it is split into batches and is the same in every process.
    """

    dim: int
    """Output dimension k; inner products are preserved up to ~``‖a‖‖b‖·sqrt(2/k)``."""
    seed: int = 0
    """Seed of the projection."""
    kind: str = "rademacher"
    """``"rademacher"`` (dense, entries ±1/√k, as LESS), ``"gaussian"`` (dense, N(0, 1/k)) or
    ``"sketch"`` (a count sketch: each coordinate added with a random sign to one random output;
    the same inner-product error bound at O(n) cost instead of O(n·k), for large gradients)."""

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"`dim` must be a positive int, got {self.dim!r}")
        if self.kind not in ("rademacher", "gaussian", "sketch"):
            raise ValueError(
                f"`kind` must be 'rademacher', 'gaussian' or 'sketch', got {self.kind!r}"
            )

    def _block(self, b: int, width: int) -> Tensor:
        """Columns of block ``b``, ``(dim, width)``; for a sketch, ``(2, width)``: the output
        row and the sign of each column."""
        digest = hashlib.sha256(f"{self.seed}\x00{b}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:7], "big"))
        if self.kind == "sketch":
            rows = torch.randint(0, self.dim, (width,), generator=gen)
            return torch.stack([rows, torch.randint(0, 2, (width,), generator=gen) * 2 - 1])
        if self.kind == "gaussian":
            return torch.randn(self.dim, width, generator=gen) / self.dim**0.5
        signs = torch.randint(0, 2, (self.dim, width), generator=gen).float().mul_(2).sub_(1)
        return signs / self.dim**0.5

    def __call__(self, x: Tensor) -> Tensor:
        """Project ``x`` ``(n,)`` to ``(dim,)`` (float32 math, block by block)."""
        x = x.detach().flatten().float().cpu()
        out = torch.zeros(self.dim)
        for b, start in enumerate(range(0, len(x), _BLOCK)):
            chunk = x[start : start + _BLOCK]
            if self.kind == "sketch":
                rows, signs = self._block(b, len(chunk))
                out.index_add_(0, rows, signs * chunk)
            else:
                out += self._block(b, len(chunk)) @ chunk  # (dim, w) @ (w,)
        return out


@dataclass
class MeanGradient:
    """Gradient of a set's mean answer NLL per token, whole and on two disjoint item halves."""

    full: Tensor
    """``(k,)``: the gradient (projected when a projection was given)."""
    tokens: int
    """Answer tokens the mean is over."""
    halves: tuple[Tensor, Tensor] | None = None
    """The same gradient on each half of the items, ``(k,)`` each; None when not asked for."""
    half_tokens: tuple[int, int] | None = None
    """Answer tokens of each half."""


def _answer_nll_sum(model, tokenizer, batch: Sequence[Example]) -> tuple[Tensor, int]:
    """Summed answer-token NLL of ``batch`` (chat template, right-padded), and the token count."""
    encoded = [encode_example(tokenizer, ex) for ex in batch]
    width, device = max(len(e.input_ids) for e in encoded), next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)
    mask, target = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, : len(e.input_ids)] = 1
        start, end = e.span("answer")
        target[i, start:end] = True
    # The LM head only where a row predicts an answer token: its cost follows answer tokens.
    where = target[:, 1:].any(0).nonzero().squeeze(1)  # (n_pos,) predicting positions
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=where).logits
    logp = logits.float().log_softmax(-1).gather(-1, ids[:, where + 1, None]).squeeze(-1)
    keep = target[:, where + 1]  # (B, n_pos)
    return -(logp * keep).sum(), int(keep.sum())


def _summed_gradient(model, tokenizer, examples, params, batch_size) -> tuple[Tensor, int]:
    """Flattened gradient of the summed answer NLL of ``examples`` w.r.t. ``params``."""
    for p in params:
        p.grad = None
    tokens = 0
    for start in range(0, len(examples), batch_size):
        loss, n = _answer_nll_sum(model, tokenizer, examples[start : start + batch_size])
        loss.backward()
        tokens += n
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    return torch.cat([g.detach().flatten() for g in grads]), tokens


def mean_answer_gradient(
    model,
    tokenizer,
    examples: Sequence[Example],
    parameters: Sequence[tuple[str, torch.nn.Parameter]],
    *,
    projection: RandomProjection | None = None,
    halves: bool = False,
    split_seed: int = 0,
    batch_size: int = 8,
) -> MeanGradient:
    """Gradient of the mean answer NLL per token over ``examples``, w.r.t. ``parameters``.

    The model is put in eval mode (no dropout) and only ``parameters`` require grad while it
    runs; both are restored after. With ``halves``, the items are split at random (``split_seed``)
    into two halves whose gradients are taken apart; the whole gradient is their token-weighted
    mean (exactly: the loss is a token mean).

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer, with a chat template.
        examples: Items with answers (≥ 2 with ``halves``).
        parameters: From :func:`select_parameters`.
        projection: Reduce each gradient to ``projection.dim`` coordinates; None: the raw
            flattened gradient (its length is the parameters' size).
        halves: Also return the gradients of two disjoint item halves.
        split_seed: Seed of the halves.
        batch_size: Items per forward pass.
    """
    examples = list(examples)
    if not examples or any(ex.answer is None for ex in examples):
        raise ValueError("`examples` must be non-empty and every one must have an answer")
    if halves and len(examples) < 2:
        raise ValueError("`halves` needs at least 2 `examples`")
    params = [p for _, p in parameters]
    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            if not halves:
                g, n = _summed_gradient(model, tokenizer, examples, params, batch_size)
                return MeanGradient(_project(g / n, projection), n)
            order = torch.randperm(
                len(examples), generator=torch.Generator().manual_seed(split_seed)
            )
            cut = len(examples) // 2
            parts = [[examples[i] for i in order[:cut]], [examples[i] for i in order[cut:]]]
            sums = [_summed_gradient(model, tokenizer, part, params, batch_size) for part in parts]
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    (ga, na), (gb, nb) = sums
    pa, pb = _project(ga / na, projection), _project(gb / nb, projection)
    full = (na * pa + nb * pb) / (na + nb)  # the projection is linear: one fewer to compute
    return MeanGradient(full, na + nb, (pa, pb), (na, nb))


def _project(g: Tensor, projection: RandomProjection | None) -> Tensor:
    return g.detach().cpu() if projection is None else projection(g)


def first_order_forecast(
    train: MeanGradient, domains: Mapping[str, MeanGradient], lr: float
) -> dict[str, object]:
    """Per domain, ``−lr · g_domain · g_train``: the predicted change of its answer NLL per token.

    Args:
        train: The training set's mean gradient.
        domains: Each domain's mean gradient (same parameters and projection as ``train``).
        lr: The step size η (e.g. the fine-tune's learning rate; it scales every domain alike).

    Returns:
        ``scores`` (``{domain: predicted change}``, > 0: the loss would rise) and, when every
        domain has halves, ``halves`` (``{"a": {...}, "b": {...}}``, the same on each item half
        against the whole training gradient) for the forecast's split-half reliability.
    """
    names = list(domains)
    grads = torch.stack([domains[d].full for d in names])  # (n_domains, k)
    out: dict[str, object] = {"scores": _named(names, first_order_change(grads, train.full, lr))}
    if names and all(domains[d].halves is not None for d in names):
        halves = [torch.stack([domains[d].halves[i] for d in names]) for i in (0, 1)]
        out["halves"] = {
            k: _named(names, first_order_change(h, train.full, lr))
            for k, h in zip("ab", halves, strict=True)
        }
    return out


def first_order_scores(
    model,
    tokenizer,
    train: Sequence[Example],
    domains: Mapping[str, Sequence[Example]],
    *,
    lr: float,
    which: str | Sequence[str] = "last_layer",
    dim: int | None = 1024,
    kind: str = "sketch",
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, object]:
    """The ``first_order`` predictor end to end: gradients of ``train`` and of every domain (on
    two item halves), projected, then :func:`first_order_forecast`.

    ``dim=None`` keeps the raw gradients (exact inner products; memory: the selected
    parameters' size per domain). Returns :func:`first_order_forecast`'s dict plus
    ``n_parameters`` and ``dim``.
    """
    grad = gradient_fn(model, tokenizer, which=which, dim=dim, kind=kind, seed=seed)
    grad = functools.partial(grad, batch_size=batch_size)
    g_train = grad(train)
    g_domains = {d: grad(items, halves=True, split_seed=seed) for d, items in domains.items()}
    out = first_order_forecast(g_train, g_domains, lr)
    n_parameters = sum(p.numel() for _, p in grad.keywords["parameters"])
    return out | {"n_parameters": n_parameters, "dim": dim}


def gradient_fn(
    model,
    tokenizer,
    *,
    which: str | Sequence[str] = "last_layer",
    dim: int | None = 1024,
    kind: str = "sketch",
    seed: int = 0,
) -> functools.partial:
    """:func:`mean_answer_gradient` with its parameters and projection chosen once:
    ``grad(examples, halves=..., split_seed=..., batch_size=...)``."""
    projection = None if dim is None else RandomProjection(dim, seed=seed, kind=kind)
    return functools.partial(
        mean_answer_gradient,
        model,
        tokenizer,
        parameters=select_parameters(model, which),
        projection=projection,
    )


def _named(names: list[str], values: Tensor) -> dict[str, float]:
    return {d: float(v) for d, v in zip(names, values, strict=True)}

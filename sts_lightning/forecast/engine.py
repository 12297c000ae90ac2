"""The forecast engine: prompt pairs → layer-L rows → one row filter → SAE → statistics.

:func:`~sts_lightning.forecast.predict.predict` and the experiment's forecasts
(:mod:`sts_lightning.experiment.forecast`) are both built from these pieces, in data order:

1. :func:`check_examples` and :func:`select_pairs` (:mod:`~sts_lightning.forecast.pairs`): a
   seeded choice of examples up to a token budget, each encoded plain (base) and after
   demonstrations (ICL), kept as indices and encoded again batch by batch;
2. :class:`Extractor`: the residual stream after layer L of the *same* tokens in both prompts
   (:func:`~sts_lightning.model.capture.iter_span_activations`), rows dropped by the one
   :class:`~sts_lightning.model.rows.RowFilter` every pass shares, fed to a :class:`Statistics`;
3. :mod:`~sts_lightning.forecast.predict`'s task and domain steps choose what to fill, and
   assemble the :class:`~sts_lightning.forecast.prediction.Prediction`.

No token row and no encoded prompt outlives its batch: memory does not grow with the budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sts_lightning.data.prompts import EncodedPrompt, Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.pairs import Pair, PairPlan, select_pairs
from sts_lightning.model.capture import count_rows, iter_span_activations, model_width
from sts_lightning.model.rows import RowFilter
from sts_lightning.model.run_inputs import resolve_pad_id
from sts_lightning.model.sae import ReconstructionQuality, encode, sae_d_sae
from sts_lightning.stats import LatentMoments, PairedShift

__all__ = [
    "LOCAL",
    "Extractor",
    "Pair",
    "PairPlan",
    "Statistics",
    "check_examples",
    "select_pairs",
]

LOCAL: Mapping[str, bool] = MappingProxyType({"sync_on_compute": False})
"""Metric keywords of every statistic here: each process runs the whole forecast on the same
data, so nothing is reduced across processes (a DDP sum would count each token once per rank)."""


def check_examples(name: str, examples: Any, n_demos: int) -> list[Example]:
    """``examples`` as a list, after checking it holds enough :class:`Example` items.

    Raises:
        TypeError: ``examples`` is not a sequence of ``Example``.
        ValueError: Fewer than ``n_demos + 1`` examples (demonstrations plus the query).
    """
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Sequence):
        raise TypeError(f"`{name}` must be a sequence of Example, got {type(examples).__name__}")
    examples = list(examples)
    if not all(isinstance(e, Example) for e in examples):
        raise TypeError(f"`{name}` must contain only sts_lightning.data.prompts.Example items")
    if len(examples) < n_demos + 1:
        raise ValueError(
            f"`{name}` has {len(examples)} examples; at least {n_demos + 1} are needed for "
            f"{n_demos} demonstrations plus the query"
        )
    return examples


@dataclass
class Statistics:
    """The streaming statistics one extraction pass fills; a field left ``None`` is skipped.

    SAE fields get latents ``(n, d_sae)``, ``raw_*`` fields the residual rows ``(n, d_model)``
    themselves (the raw-neuron baseline), all from the same kept rows of the same passes.
    """

    moments: LatentMoments | None = None
    """SAE latents of the base rows (STS_act, notebook, signed; mean latent vector)."""
    shift: PairedShift | None = None
    """SAE latents, base vs ICL rows: Δ and δ of a task, STS_ICL's shift of a domain."""
    quality: ReconstructionQuality | None = None
    """SAE reconstruction of the base rows."""
    raw_moments: LatentMoments | None = None
    """Residual rows of the base prompts."""
    raw_shift: PairedShift | None = None
    """Residual rows, base vs ICL."""
    counts: dict[str, int] = field(default_factory=dict)
    """``n_tokens`` (rows kept), ``n_dropped`` and ``n_examples`` of the pass."""
    n_selected: int = 0
    """Span tokens of the chosen examples (below the budget when the examples ran out)."""

    @property
    def paired(self) -> bool:
        """Whether the pass needs the ICL prompts (a shift is asked for)."""
        return self.shift is not None or self.raw_shift is not None

    def update(self, sae, base: Tensor, icl: Tensor | None, items: Tensor | None = None) -> None:
        """Add kept rows: ``base`` ``(n, d_model)`` and, when paired, its ICL twin ``icl``.

        ``items`` ``(n,)`` int64 is the index of the pair (in run order) each row comes from,
        for statistics kept per item; these ones pool every row.
        """
        latents = encode(sae, base)  # (n, d_sae), shared by every SAE statistic
        if self.moments is not None:
            self.moments.update(latents)
        if self.quality is not None:
            with torch.inference_mode():
                x_hat = sae.decode(latents).float()
            self.quality.update(base.to(x_hat.device), x_hat, latents)
        if self.shift is not None:
            self.shift.update(latents, encode(sae, icl))
        if self.raw_moments is not None:
            self.raw_moments.update(base)
        if self.raw_shift is not None:
            self.raw_shift.update(base, icl)

    def begin(self, n_items: int) -> None:
        """Called before a pass over ``n_items`` pairs (for statistics kept per item)."""

    def sae_quality(self) -> dict[str, float]:
        """``fvu``, ``l0`` and ``dead_fraction`` of the SAE on the base rows."""
        q = self.quality.compute()
        return {k: float(q[k]) for k in ("fvu", "l0", "dead_fraction")}


class Extractor:
    """Runs base/ICL pairs through model → layer L → :class:`RowFilter` → SAE into statistics.

    One filter serves every pass of the extractor, so the massive-activation threshold (given,
    or fixed by the first batch it sees) is the same for every statistic.

    Args:
        model: A causal LM accepted by :func:`~sts_lightning.model.capture.decoder_layers`.
        sae: The SAE reading the residual stream after ``layer``.
        tokenizer: The model's tokenizer.
        layer: Decoder layer read.
        config: Spans, budgets, batch size and the filter's ``max_norm``/``outlier_factor``.
    """

    rows_per_update = 128
    """Rows encoded and added to the statistics at a time (bounds the ``(rows, d_sae)`` buffers)."""

    def __init__(self, model, sae, tokenizer, layer: int, config: PredictConfig) -> None:
        self.model, self.sae, self.tokenizer, self.layer = model, sae, tokenizer, layer
        self.config = config
        self.pad_id = resolve_pad_id(tokenizer)
        self.exclude = set(tokenizer.all_special_ids) if config.exclude_special_tokens else set()
        self.keep = RowFilter(config.max_norm, config.outlier_factor)
        self.d_sae, self.d_model = sae_d_sae(sae), model_width(model)

    @property
    def max_norm(self) -> float | None:
        """The residual-norm threshold in use; ``None`` until a batch with finite rows."""
        return self.keep.max_norm

    def select(
        self,
        examples: Sequence[Example],
        n_demos: int,
        span: str,
        budget: int,
        *,
        seed: int | None = None,
        demo_pool: Sequence[Example] | None = None,
    ) -> tuple[list[Pair], int]:
        """:func:`select_pairs` with this extractor's tokenizer, config and excluded ids."""
        return select_pairs(
            self.tokenizer,
            examples,
            n_demos,
            span,
            budget,
            self.config,
            self.exclude,
            seed=seed,
            demo_pool=demo_pool,
        )

    def _rows(
        self, prompts: Sequence[EncodedPrompt], span: str, desc: str | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(rows, items)`` batch by batch: the rows of ``prompts`` and each row's prompt index.

        A lazy sequence is encoded one batch at a time.
        """
        size = self.config.batch_size
        show = self.config.progress and desc is not None
        with tqdm(total=len(prompts), desc=desc, unit="seq", disable=not show) as bar:
            for first in range(0, len(prompts), size):
                batch = prompts[first : first + size]  # (batch_size,) encoded prompts
                rows = torch.cat(
                    list(
                        iter_span_activations(
                            self.model,
                            [p.input_ids for p in batch],
                            [p.span(span) for p in batch],
                            layer=self.layer,
                            batch_size=len(batch),
                            pad_token_id=self.pad_id,
                            exclude_token_ids=self.exclude,
                        )
                    )
                )
                counts = [count_rows([p.input_ids], [p.span(span)], self.exclude) for p in batch]
                if len(rows) != sum(counts):
                    raise RuntimeError("the captured rows do not match the prompts' span tokens")
                items = torch.arange(first, first + len(batch)).repeat_interleave(
                    torch.tensor(counts)
                )
                yield rows, items
                bar.update(len(batch))

    def run(self, pairs: Sequence[Pair], span: str, desc: str, stats: Statistics) -> dict[str, int]:
        """Feed ``stats`` the kept rows of ``pairs``; the ICL prompts run only when it is paired.

        Returns:
            ``{"n_tokens": rows kept, "n_dropped": rows dropped}``; a pair's rows are kept or
            dropped together (NaN/inf rows are dropped like massive ones).
        """
        base_it = self._rows(_side(pairs, "base"), span, desc)
        # One bar: the ICL pass advances in lockstep with the base one.
        icl_it = self._rows(_side(pairs, "icl"), span, None) if stats.paired else None
        kept = dropped = 0
        stats.begin(len(pairs))
        for base, items in base_it:
            icl = next(icl_it)[0] if icl_it is not None else None
            keep = self.keep(base)
            if icl is not None:
                if icl.shape != base.shape:  # cannot happen with aligned spans; never pair wrongly
                    raise RuntimeError("base and ICL rows are misaligned")
                keep &= self.keep(icl)
            kept, dropped = kept + int(keep.sum()), dropped + int((~keep).sum())
            base, icl = base[keep], None if icl is None else icl[keep]  # (n_kept, d_model)
            items = items[keep.cpu()]
            # Fixed-size slices: the (rows, d_sae) latents and scratch of an update never exceed
            # one slice, so the peak does not follow the largest batch a bigger budget draws.
            for first in range(0, len(base), self.rows_per_update):
                rows = slice(first, first + self.rows_per_update)
                icl_rows = None if icl is None else icl[rows]
                stats.update(self.sae, base[rows], icl_rows, items=items[rows])
        return {"n_tokens": kept, "n_dropped": dropped}


def _side(pairs: Sequence[Pair], which: str) -> Sequence[EncodedPrompt]:
    """The base or ICL prompts of ``pairs``: lazily encoded for a :class:`PairPlan`."""
    if isinstance(pairs, PairPlan):
        return pairs.side(which)
    return [pair[which == "icl"] for pair in pairs]

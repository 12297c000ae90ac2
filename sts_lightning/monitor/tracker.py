"""Forecast at step 0, then track what training really does: the core of both STS callbacks.

:class:`STSTracker` knows nothing of Lightning or HF trainers; the Lightning callback
(``sts_lightning.callbacks.STSCallback``) and the HF/TRL twin (:mod:`sts_lightning.hf`) only call
:meth:`~STSTracker.start` before the first step, :meth:`~STSTracker.measure` every few steps and
log what they return. Per measurement:

- **realised shift** Δ_real,j = mean_t (h_j(x; θ_now) − h_j(x; θ_base))² on a fixed probe set
  (the training queries), from residual rows of θ_base kept at start (``probe × d_model``, not
  ``× d_sae``); overlap@k and per-latent Spearman with the ICL forecast Δ;
- **realised STS** per domain: the paper's "actual shifted dimensions" variant, STS_act over the
  top-k realised latents;
- **realised deltas**: held-out loss change per domain (or a user evaluator's scores);
- the **correlation** of the forecast with the realised deltas, and a **forgetting alarm**.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from sts_lightning.config import check_fields, one_of, positive, positive_int
from sts_lightning.data.prompts import Example, encode_example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.modes import MODES
from sts_lightning.forecast.prediction import Prediction
from sts_lightning.model.capture import iter_span_activations
from sts_lightning.model.rows import keep_rows
from sts_lightning.model.run_inputs import resolve_pad_id
from sts_lightning.model.sae import check_sae_fits, encode, sae_d_sae
from sts_lightning.monitor.evaluation import (
    EVAL_SPANS,
    encode_eval_set,
    forecast_correlations,
    sequence_losses,
    shift_metrics,
)
from sts_lightning.monitor.health import SAEHealth
from sts_lightning.monitor.state import load_tracker_state, save_tracker_state
from sts_lightning.stats import PairedShift

__all__ = ["STSTracker", "TrackerConfig", "load_tracker_state", "save_tracker_state"]

log = logging.getLogger(__name__)

Evaluator = Callable[[torch.nn.Module, Any], Mapping[str, float]]


@dataclass
class TrackerConfig:
    """What is measured during training, and how often."""

    every_n_steps: int = 50
    """Measure every this many optimizer steps (and at the end of training)."""
    probe_tokens: int = 1000
    """Training-query tokens on which the realised shift is measured (fixed for the run)."""
    eval_tokens: int = 128
    """Held-out tokens per domain for the realised loss delta (paired: the same tokens before and
    after, so the delta is far less noisy than the loss; the main cost of a measurement)."""
    eval_span: str = "all"
    """Which held-out tokens are scored: ``"all"`` (prompt + answer: the domain's perplexity,
    cheapest per token), ``"answer"`` or ``"prompt"``."""
    mode: str = "act"
    """Forecast mode correlated with the realised deltas: one of act, icl, notebook, signed."""
    absolute: bool = True
    """Correlate with |realised delta| (the paper predicts magnitude)."""
    alarm_threshold: float | None = None
    """Warn when a domain's held-out loss rises by more than this (nats/token); ``None``: off."""
    stop_on_alarm: bool = False
    """Stop training when the alarm fires (off by default: monitoring never ends a run alone)."""
    sae_max_fvu: float = 0.5
    """Warn when the SAE's FVU on the model exceeds this (see :mod:`~.health`)."""
    sae_max_dead: float = 0.9
    """Warn when more than this fraction of the SAE's latents never fires on the model."""

    def __post_init__(self) -> None:
        check_fields(self, positive_int, "every_n_steps", "probe_tokens", "eval_tokens")
        one_of("eval_span", self.eval_span, EVAL_SPANS)
        one_of("mode", self.mode, tuple(MODES))
        positive("alarm_threshold", self.alarm_threshold, optional=True)
        check_fields(self, positive, "sae_max_fvu", "sae_max_dead")


class STSTracker:
    """Forecast + realised-shift tracking for one SAE (one layer).

    Args:
        sae: Loaded SAE (see :func:`~sts_lightning.model.sae.load_sae`); kept here, never on a
            module.
        train_examples: The fine-tuning data (prompt/answer), for the forecast and the probe.
        domains: ``{name: examples}`` scored by the forecast.
        heldout: ``{name: examples}`` never used for scoring, for realised loss deltas
            (``None`` with an ``evaluator``, or to skip deltas).
        predict_config: Forecast settings.
        config: Tracking settings.
        evaluator: ``(model, tokenizer) -> {domain: score}``; its change from step 0 replaces the
            held-out loss delta.
        prediction: A forecast made earlier (``sts-lightning predict``, ``Prediction.load``):
            the forecast step is skipped.
    """

    def __init__(
        self,
        sae,
        train_examples: Sequence[Example],
        domains: Mapping[str, Sequence[Example]],
        heldout: Mapping[str, Sequence[Example]] | None = None,
        predict_config: PredictConfig | None = None,
        config: TrackerConfig | None = None,
        evaluator: Evaluator | None = None,
        prediction: Prediction | None = None,
    ) -> None:
        if not domains:
            raise ValueError("`domains` must name at least one domain to score")
        if len(domains) < 3:
            warnings.warn(
                f"{len(domains)} domain(s): the forecast-vs-realised correlation needs "
                "3 or more and is not reported; shifts are still tracked",
                stacklevel=2,
            )
        if evaluator is not None and not callable(evaluator):
            raise TypeError("`evaluator` must be callable (model, tokenizer) -> {domain: score}")
        self.sae, self.evaluator = sae, evaluator
        self.train_examples, self.domains = list(train_examples), dict(domains)
        self.heldout = dict(heldout or {})
        self.predict_config = predict_config or PredictConfig(progress=False)
        self.config = config or TrackerConfig()
        self.prediction: Prediction | None = prediction
        self._check_loaded = prediction is not None
        self.probe: dict[str, Any] | None = None  # ids, spans, base rows
        self.base_scores: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.last_shift: Tensor | None = None
        """Δ_real ``(d_sae,)`` of the latest :meth:`measure` (not checkpointed)."""
        self._eval_sets: dict | None = None
        self.health = SAEHealth(self.config.sae_max_fvu, self.config.sae_max_dead)

    # ---------------------------------------------------------------- start (step 0)
    def start(self, model, tokenizer) -> dict[str, float]:
        """Forecast and record the base state (skipped when restored); returns metrics to log."""
        if self._check_loaded:  # a forecast made elsewhere must fit this model and SAE
            check_sae_fits(self.sae, model, self.prediction.layer)
            if self.prediction.shift.numel() != sae_d_sae(self.sae):
                raise ValueError(
                    f"`forecast` has d_sae={self.prediction.shift.numel()}, the SAE "
                    f"has {sae_d_sae(self.sae)}: it was made with another SAE"
                )
            self._check_loaded = False
        if self.prediction is None:
            from sts_lightning.forecast.predict import predict

            self.prediction = predict(
                model, tokenizer, self.sae, self.train_examples, self.domains, self.predict_config
            )
        self.health.check_start(self.prediction.quality, self.prediction.layer)
        if self.probe is None:
            self.probe = self._build_probe(model, tokenizer)
            self.base_scores = self._scores(model, tokenizer)
        pred, out = self.prediction, {}
        for name, score in pred.domains.items():
            for mode in MODES:
                value = getattr(score, mode)
                if value is not None:
                    out[f"sts/pred/{mode}/{name}"] = value
        out["sts/sae/fvu"], out["sts/sae/l0"] = pred.quality["fvu"], pred.quality["l0"]
        return out

    def _build_probe(self, model, tokenizer) -> dict[str, Any]:
        cfg = self.predict_config
        order = list(range(len(self.train_examples)))
        random.Random(cfg.seed + 1).shuffle(order)
        ids, spans, total = [], [], 0
        for i in order:
            enc = encode_example(
                tokenizer,
                self.train_examples[i],
                system_prompt=cfg.system_prompt,
                use_chat_template=cfg.use_chat_template,
            )
            ids.append(enc.input_ids)
            spans.append(enc.span(cfg.train_span))
            total += spans[-1][1] - spans[-1][0]
            if total >= self.config.probe_tokens:
                break
        probe = {"input_ids": ids, "spans": spans}
        rows = self._probe_rows(model, tokenizer, probe)  # (n_rows, d_model) at θ_base
        # Massive-activation rows are chosen once, on the base model: fine-tuning may rescale
        # the residual stream, and the realised shift must compare the same token rows.
        probe["keep"] = keep_rows(rows, self.prediction.max_norm)
        probe["rows"] = rows[probe["keep"]]
        return probe

    def _probe_rows(self, model, tokenizer, probe) -> Tensor:
        exclude = (
            set(tokenizer.all_special_ids) if self.predict_config.exclude_special_tokens else ()
        )
        rows = iter_span_activations(
            model,
            probe["input_ids"],
            probe["spans"],
            layer=self.prediction.layer,
            batch_size=self.predict_config.batch_size,
            pad_token_id=resolve_pad_id(tokenizer),
            exclude_token_ids=exclude,
        )
        return torch.cat([r.cpu() for r in rows])

    def _scores(self, model, tokenizer) -> dict[str, float]:
        if self.evaluator is not None:
            return {k: float(v) for k, v in self.evaluator(model, tokenizer).items()}
        if not self.heldout:
            return {}
        if self._eval_sets is None:
            self._eval_sets = {
                n: encode_eval_set(
                    tokenizer, ex, self.config.eval_tokens, span=self.config.eval_span
                )
                for n, ex in self.heldout.items()
            }
        return sequence_losses(
            model,
            self._eval_sets,
            pad_token_id=resolve_pad_id(tokenizer),
            batch_size=self.predict_config.batch_size,
        )

    # ---------------------------------------------------------------- measure (step t)
    def measure(self, model, tokenizer, step: int) -> tuple[dict[str, float], list[str]]:
        """Realised shift, realised STS, deltas and correlations at ``step``.

        Returns:
            ``(metrics, alarms)``: metrics to log, and the domains whose alarm fired.
        """
        if self.prediction is None or self.probe is None:
            raise RuntimeError("STSTracker.measure called before start()")
        pred = self.prediction
        real = self.last_shift = self.realised_shift(model, tokenizer)
        out, realised_sts = shift_metrics(pred, real)
        out |= self.health.measure(self.sae, self.probe["rows"], self._now_rows)
        deltas = {}
        if self.base_scores:
            now = self._scores(model, tokenizer)
            deltas = {n: now[n] - self.base_scores[n] for n in self.base_scores if n in now}
            out |= {f"sts/delta/{n}": v for n, v in deltas.items()}
        out |= forecast_correlations(
            pred.scores(self.config.mode), realised_sts, deltas, absolute=self.config.absolute
        )
        alarms = self._alarms(deltas)
        out["sts/alarm"] = float(len(alarms))
        self.history.append({"step": float(step), **out})
        return out, alarms

    def measured_at(self, step: int) -> bool:
        """Whether the latest measurement was at ``step`` (training's end need not repeat it)."""
        return bool(self.history) and self.history[-1]["step"] == step

    def realised_shift(self, model, tokenizer) -> Tensor:
        """Δ_real ``(d_sae,)``: mean squared change of each latent on the probe since step 0."""
        if self.prediction is None or self.probe is None:
            raise RuntimeError("STSTracker.realised_shift called before start()")
        rows = self._probe_rows(model, tokenizer, self.probe)
        now_rows = self._now_rows = rows[self.probe["keep"]]
        # Each rank measures the same probe with the same (DDP-synchronised) weights: no reduction.
        shift = PairedShift(self.prediction.shift.numel(), sync_on_compute=False)
        shift.update(encode(self.sae, self.probe["rows"]), encode(self.sae, now_rows))
        return shift.feature_shift().float()

    def _alarms(self, deltas: Mapping[str, float]) -> list[str]:
        threshold = self.config.alarm_threshold
        if threshold is None or self.evaluator is not None:
            return []
        return [n for n, d in deltas.items() if d > threshold]

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Forecast, probe (with its base rows), base scores and history; tensors stay tensors."""
        pred = self.prediction
        return {
            "prediction": pred and {"data": pred.to_dict(), "tensors": pred.tensors()},
            "probe": self.probe,
            "base_scores": dict(self.base_scores),
            "history": list(self.history),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; :meth:`start` then skips the forecast."""
        p = state.get("prediction")
        if p is not None:
            self.prediction = Prediction.from_parts(p["data"], p["tensors"])
        self.probe = state.get("probe")
        self.base_scores = dict(state.get("base_scores", {}))
        self.history = list(state.get("history", []))

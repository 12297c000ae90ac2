"""``STSCallback``: the STS forecast before step 1 and the real SAE shift while a model trains.

One line in a Lightning script::

    trainer = Trainer(callbacks=[STSCallback(sae="path/to/sae", domains=["math", "law", "code"])])

The LightningModule must expose its Hugging Face model (``.model`` by default) and tokenizer
(``.tokenizer``, or pass one). All the work is in :class:`sts_lightning.monitor.tracker.STSTracker`;
the hooks below only dispatch to it and log. Failures follow the one policy of both callbacks
(:mod:`sts_lightning.monitor.guard`): a misconfiguration found before step 1 raises; any later
failure is reported once and monitoring stops for the rest of the run; training goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from sts_lightning.config import positive_int
from sts_lightning.data.examples import DomainSpec
from sts_lightning.data.prompts import Example
from sts_lightning.data.row_reader import as_examples, dataset_examples, has_row_format
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.prediction import Prediction
from sts_lightning.monitor.guard import MonitorGuard
from sts_lightning.monitor.settings import build_tracker, tracking_configs
from sts_lightning.monitor.tracker import Evaluator, STSTracker, TrackerConfig

__all__ = ["STSCallback"]

log = logging.getLogger(__name__)


class STSCallback(Callback):
    """Forecast per-domain transferability at train start; track the realised shift after.

    Args:
        sae: sae-lens id (``release/sae_id``), local SAE directory, or a loaded SAE object.
        domains: Built-in domain names (scored on their "score" half, deltas on "heldout"), or
            ``{name: examples or texts}`` (first half scored, second half held out).
        train_examples: The fine-tuning data for the ICL forecast and the probe; ``None`` takes
            up to ``max_train_examples`` from the train dataloader's dataset (Examples, or rows
            in any TRL format, read as the HF callback reads its ``train_dataset``:
            :mod:`sts_lightning.data.row_reader`).
        layer: Decoder layer; ``None`` keeps ``predict_config.layer`` (whose ``None`` reads it
            from the SAE's metadata).
        k: Size of the shifted-latent set; ``None`` keeps ``predict_config.k`` (100 by default).
        every_n_steps: Measure the realised shift every this many optimizer steps (once per
            optimizer step whatever ``accumulate_grad_batches``). Measured metrics are also
            logged through the module, so ``EarlyStopping`` / ``ModelCheckpoint`` can
            ``monitor`` any ``sts/...`` key.
        predict_config: Further forecast settings (budgets, demonstrations, spans).
        tracker_config: Further tracking settings (probe size, alarm, correlated mode).
        evaluator: ``(model, tokenizer) -> {domain: score}`` replacing held-out loss deltas.
        model_attr: Attribute of the LightningModule holding the HF model.
        tokenizer: The tokenizer, when the module has no ``.tokenizer``.
        dirpath: Where plots and the forecast are written (default: the trainer's log dir).
        heldout_items: Held-out items per built-in domain for loss deltas.
        max_train_examples: Examples taken from the train dataloader when ``train_examples``
            is ``None``.
        forecast: A saved forecast (``sts-lightning predict`` output dir or a ``Prediction``)
            to use instead of computing one at train start.
        link_template: Link per latent in the W&B table, e.g.
            ``"https://www.neuronpedia.org/<model>/{layer}-res/{latent}"``.
    """

    def __init__(
        self,
        sae: Any,
        domains: DomainSpec,
        train_examples: Sequence[Example] | None = None,
        *,
        layer: int | None = None,
        k: int | None = None,
        every_n_steps: int = 50,
        predict_config: PredictConfig | None = None,
        tracker_config: TrackerConfig | None = None,
        evaluator: Evaluator | None = None,
        model_attr: str = "model",
        tokenizer: Any = None,
        dirpath: str | None = None,
        heldout_items: int = 32,
        max_train_examples: int = 256,
        link_template: str | None = None,
        forecast: str | Prediction | None = None,
    ) -> None:
        positive_int("every_n_steps", every_n_steps)
        if not domains:
            raise ValueError("`domains` must name at least one domain")
        self._predict_config, self._tracker_config = tracking_configs(
            predict_config, tracker_config, k=k, layer=layer, every_n_steps=every_n_steps
        )
        self._sae_spec, self._domains, self._evaluator = sae, domains, evaluator
        self._train_examples = None if train_examples is None else as_examples(train_examples)
        self.model_attr, self.tokenizer, self.dirpath = model_attr, tokenizer, dirpath
        self.heldout_items, self.max_train_examples = heldout_items, max_train_examples
        self.link_template = link_template
        self.forecast = Prediction.load(forecast) if isinstance(forecast, (str, Path)) else forecast
        self.tracker: STSTracker | None = None
        self._pending_state: dict | None = None
        self._guard = MonitorGuard("STSCallback", warn=rank_zero_warn)
        self._failed_loggers: set[int] = set()
        self._seen_step = 0

    @property
    def state_key(self) -> str:
        # Several callbacks (one per layer / SAE) can live in one trainer and one checkpoint.
        return self._generate_state_key(sae=str(self._sae_spec), layer=self._predict_config.layer)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._seen_step = trainer.global_step
        self._guard.run("forecast", self._start, trainer, pl_module, starting=True)
        if self._guard.stopped:
            self.tracker = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        # Once per optimizer step: with `accumulate_grad_batches=N` the step advances on every
        # N-th batch only, and the N-1 batches before it must not measure the same step again.
        # A step that jumps past a multiple of `every_n_steps` (several optimizer steps in one
        # batch, manual optimisation) measures too.
        every, step, seen = self._tracker_config.every_n_steps, trainer.global_step, self._seen_step
        self._seen_step = step
        if self._active() and step // every > seen // every:
            self._guard.run("measure", self._measure, trainer, pl_module, True)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active() and not self.tracker.measured_at(trainer.global_step):
            self._guard.run("measure", self._measure, trainer, pl_module, False)
        if self._active() and self.tracker.prediction is not None:
            self._guard.run("report", self._report, trainer)

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict() if self.tracker is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The tracker is built at train start (it needs the SAE and the module); keep it till then.
        self._pending_state = dict(state_dict) if state_dict else None

    # ------------------------------------------------------------------ work
    def _active(self) -> bool:
        return self.tracker is not None and not self._guard.stopped

    def _hf(self, pl_module: LightningModule) -> tuple[torch.nn.Module, Any]:
        model = getattr(pl_module, self.model_attr, None)
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "get_input_embeddings"):
            raise ValueError(
                f"STSCallback needs the LightningModule's Hugging Face model at "
                f"`{self.model_attr}` (set `model_attr`), got {type(model).__name__}"
            )
        tokenizer = self.tokenizer or getattr(pl_module, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "STSCallback needs a tokenizer: pass `tokenizer=` or set `pl_module.tokenizer`"
            )
        return model, tokenizer

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        model, tokenizer = self._hf(pl_module)
        self.tracker = build_tracker(
            self._sae_spec,
            self._domains,
            self._train_examples or (lambda: self._from_dataloader(trainer)),
            device=pl_module.device,
            heldout_items=self.heldout_items,
            predict_config=self._predict_config,
            tracker_config=self._tracker_config,
            evaluator=self._evaluator,
            prediction=self.forecast,
        )
        if self._pending_state:
            self.tracker.load_state_dict(self._pending_state)  # forecast is not recomputed
            self._pending_state = None
        metrics = self.tracker.start(model, tokenizer)
        self._log(trainer, metrics, step=trainer.global_step)
        directory = self._dir(trainer)  # on every rank: `trainer.log_dir` is a collective
        if self.tracker.prediction is not None and trainer.is_global_zero:
            self.tracker.prediction.save(directory / "forecast")

    def _measure(self, trainer: Trainer, pl_module: LightningModule, in_batch: bool) -> None:
        model, tokenizer = self._hf(pl_module)
        metrics, alarms = self.tracker.measure(model, tokenizer, trainer.global_step)
        self._log(trainer, metrics, step=trainer.global_step)
        if in_batch:  # `trainer.callback_metrics`, for EarlyStopping / ModelCheckpoint(monitor=)
            pl_module.log_dict(
                {k: float(v) for k, v in metrics.items()},
                on_step=True,
                on_epoch=False,
                logger=False,
            )
        for name in alarms:
            rank_zero_warn(
                f"STSCallback: held-out loss on {name!r} rose by "
                f"{metrics[f'sts/delta/{name}']:.3f} nats/token (alarm threshold "
                f"{self._tracker_config.alarm_threshold})"
            )
        if alarms and self._tracker_config.stop_on_alarm:
            trainer.should_stop = True

    def _log(self, trainer: Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            try:
                logger.log_metrics(metrics, step=step)
            except Exception as err:  # a broken logger must not end training
                if id(logger) not in self._failed_loggers:  # report once per logger
                    self._failed_loggers.add(id(logger))
                    rank_zero_warn(f"STSCallback: logger {type(logger).__name__} failed: {err!r}")

    def _report(self, trainer: Trainer) -> None:
        directory = self._dir(trainer)  # on every rank: `trainer.log_dir` is a collective
        if trainer.is_global_zero:
            from sts_lightning.monitor.plots import log_rich, save_plots

            paths = save_plots(self.tracker, directory)
            log_rich(trainer.loggers, self.tracker, paths, self.link_template)

    def _dir(self, trainer: Trainer) -> Path:
        base = self.dirpath or trainer.log_dir or trainer.default_root_dir
        return Path(base) / "sts"

    def _from_dataloader(self, trainer: Trainer) -> list[Example]:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        n = min(len(dataset) if dataset is not None else 0, self.max_train_examples)
        rows = []
        for item in (dataset[i] for i in range(n)):  # a packed row lists its examples
            rows += item.get("examples", [item]) if isinstance(item, Mapping) else [item]
        # Items of other kinds (token ids, tensors) are skipped; the rest are read as the HF
        # callback reads its `train_dataset` (a conversation with earlier turns is refused).
        rows = [x for x in rows if has_row_format(x)][: self.max_train_examples]
        if len(rows) < self._predict_config.n_demos + 1:
            raise ValueError(
                "STSCallback found no prompt/answer items in the train dataloader's "
                "dataset: pass `train_examples=`"
            )
        return dataset_examples(rows, caller="STSCallback", argument="train dataloader's dataset")

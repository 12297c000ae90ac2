"""``STSTrainerCallback``: STS for HF ``Trainer`` and TRL's ``SFTTrainer`` / ``GRPOTrainer``.

The same core (:class:`~sts_lightning.monitor.tracker.STSTracker`) as the Lightning ``STSCallback``.

One line after building the trainer::

    STSTrainerCallback.attach(trainer, sae="path/to/sae", domains=["math", "law", "code"],
                              train_examples=examples)

Metrics go through ``trainer.log`` (so ``report_to`` integrations such as W&B receive them and
they land in ``state.log_history``). Its state is JSON (``trainer_state.json``) plus a
safetensors file in the checkpoint folder, restored with
``TrainingArguments(restore_callback_states_from_checkpoint=True)``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from sts_lightning.config import positive_int
from sts_lightning.data.examples import as_examples, examples_to_json
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.monitor.settings import build_tracker, tracking_configs
from sts_lightning.monitor.state import load_tracker_state, save_tracker_state
from sts_lightning.monitor.tracker import STSTracker, TrackerConfig

__all__ = ["STSTrainerCallback"]

log = logging.getLogger(__name__)


class STSTrainerCallback(TrainerCallback, ExportableState):
    """Forecast at train begin, realised SAE shift every ``every_n_steps`` (HF/TRL trainers).

    Args:
        sae: sae-lens id, local SAE directory or loaded SAE (an object cannot be restored from a
            checkpoint by HF; pass an id or directory to resume).
        domains: Built-in domain names or ``{name: texts or examples}``.
        train_examples: The fine-tuning data as ``Example`` or ``{"prompt", "answer"}`` dicts.
        layer, k, every_n_steps: As in the Lightning ``STSCallback``.
        predict_config, tracker_config: Dicts (JSON) or the dataclasses.
        heldout_items: Held-out items per built-in domain for loss deltas.
        trainer: The trainer, for logging through ``trainer.log``; :meth:`attach` sets it.
    """

    def __init__(
        self,
        sae: Any = None,
        domains: Any = None,
        train_examples: Any = None,
        layer: int | None = None,
        k: int = 100,
        every_n_steps: int = 50,
        predict_config: dict | PredictConfig | None = None,
        tracker_config: dict | TrackerConfig | None = None,
        heldout_items: int = 32,
        trainer: Any = None,
    ) -> None:
        if sae is None or not domains:
            raise ValueError("STSTrainerCallback needs `sae` and a non-empty `domains`")
        positive_int("every_n_steps", every_n_steps)
        if not train_examples:
            raise ValueError("`train_examples` must hold the fine-tuning pairs (Example or dicts)")
        pcfg, self.tracker_config = tracking_configs(
            predict_config, tracker_config, k=k, layer=layer, every_n_steps=every_n_steps
        )
        # Here `layer` has always won, None included (a `predict_config` layer is dropped),
        # where STSCallback keeps the config's layer for None; kept until decided otherwise.
        self.predict_config = replace(pcfg, layer=layer)
        self.sae, self.domains, self.heldout_items = sae, domains, heldout_items
        self.train_examples = as_examples(train_examples)
        self.trainer = trainer
        self.tracker: STSTracker | None = None
        self._state_dir: str | None = None  # set by HF when restoring from a checkpoint
        self._output_dir: str | None = None
        self._failed = False

    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> STSTrainerCallback:
        """Build the callback for ``trainer``, add it, and return it."""
        callback = cls(trainer=trainer, **kwargs)
        trainer.add_callback(callback)
        return callback

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._output_dir = args.output_dir
        tokenizer = processing_class or kwargs.get("tokenizer")
        if model is None or tokenizer is None:
            raise ValueError("STSTrainerCallback needs the trainer's model and processing_class")
        self.tracker = build_tracker(
            self.sae,
            self.domains,
            self.train_examples,
            device=next(model.parameters()).device,
            heldout_items=self.heldout_items,
            predict_config=self.predict_config,
            tracker_config=self.tracker_config,
        )
        if self._state_dir and Path(self._state_dir).exists():
            self.tracker.load_state_dict(load_tracker_state(self._state_dir))
        self._log(state, self.tracker.start(model, tokenizer))

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.tracker is not None and state.global_step % self.tracker_config.every_n_steps == 0:
            self._measure(state, control, model, processing_class or kwargs.get("tokenizer"))

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.tracker is None:
            return
        if not self.tracker.measured_at(state.global_step):
            self._measure(state, control, model, processing_class or kwargs.get("tokenizer"))
        if state.is_world_process_zero and not self._failed:
            from sts_lightning.monitor.plots import save_plots

            save_plots(self.tracker, Path(args.output_dir) / "sts")

    # ------------------------------------------------------------------ work
    def _measure(self, state, control, model, tokenizer) -> None:
        try:
            metrics, alarms = self.tracker.measure(model, tokenizer, state.global_step)
        except Exception as err:  # monitoring must never end a training run
            if not self._failed:
                warnings.warn(
                    f"STSTrainerCallback: measure failed and is skipped: {err!r}", stacklevel=2
                )
            self._failed, self.tracker = True, None
            return
        self._log(state, metrics)
        for name in alarms:
            warnings.warn(
                f"STSTrainerCallback: held-out loss on {name!r} rose by "
                f"{metrics[f'sts/delta/{name}']:.3f} nats/token",
                stacklevel=2,
            )
        if alarms and self.tracker_config.stop_on_alarm:
            control.should_training_stop = True

    def _log(self, state, metrics: dict[str, float]) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        else:  # no trainer reference: the history still gets them
            state.log_history.append({**metrics, "step": state.global_step})

    # ------------------------------------------------------------------ resume (HF)
    def state(self) -> dict:
        """JSON for ``trainer_state.json``; tensors go to the checkpoint folder being written."""
        state_dir = None
        if self.tracker is not None and self._output_dir is not None and self.trainer is not None:
            step = self.trainer.state.global_step
            state_dir = str(Path(self._output_dir) / f"checkpoint-{step}" / "sts_tracker")
            save_tracker_state(self.tracker.state_dict(), state_dir)
        sae = self.sae if isinstance(self.sae, (str, Path)) else None
        return {
            "args": {
                "sae": None if sae is None else str(sae),
                "domains": examples_to_json(self.domains),
                "train_examples": examples_to_json(self.train_examples),
                "layer": self.predict_config.layer,
                "k": self.predict_config.k,
                "every_n_steps": self.tracker_config.every_n_steps,
                "predict_config": asdict(self.predict_config),
                "tracker_config": asdict(self.tracker_config),
                "heldout_items": self.heldout_items,
            },
            "attributes": {"_state_dir": state_dir},
        }

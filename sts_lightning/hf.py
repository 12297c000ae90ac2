"""``STSTrainerCallback``: STS for HF ``Trainer`` and TRL's ``SFTTrainer`` / ``GRPOTrainer``.

The same core (:class:`~sts_lightning.monitor.tracker.STSTracker`) and the same failure policy
(:mod:`sts_lightning.monitor.guard`) as the Lightning ``STSCallback``. One line after building
the trainer::

    STSTrainerCallback.attach(trainer, sae="path/to/sae", domains=["math", "law", "code"])

Metrics go through ``trainer.log``: ``report_to`` integrations (W&B, TensorBoard…) receive them
and they land in ``state.log_history``. ``train_examples`` default to the trainer's
``train_dataset`` in any TRL format (:mod:`~sts_lightning.data.row_reader`, the one row reader).

Resuming (``TrainingArguments(restore_callback_states_from_checkpoint=True)``): HF rebuilds the
callback from the JSON it saved (:meth:`STSTrainerCallback.state`) and drops the one you
attached. At train begin the rebuilt callback finds the attached one again (:meth:`attach`
registers it with its trainer), hands it the checkpoint's tracker state and puts it back in its
place: the trainer, an SAE or evaluator passed as an object and the W&B run all survive any
number of resumes. The tracker state (forecast, probe, history) is written into every
checkpoint folder (``sts_tracker/``) by :meth:`~STSTrainerCallback.on_save`; without
``restore_callback_states_from_checkpoint`` the attached callback reads it from the resumed
checkpoint in ``output_dir`` itself.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from sts_lightning.config import positive_int
from sts_lightning.data.examples import examples_to_json
from sts_lightning.data.row_reader import as_examples, dataset_examples
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.prediction import Prediction
from sts_lightning.monitor.guard import MonitorGuard
from sts_lightning.monitor.settings import build_tracker, tracking_configs
from sts_lightning.monitor.state import load_tracker_state, save_tracker_state
from sts_lightning.monitor.tracker import Evaluator, STSTracker, TrackerConfig

__all__ = ["STSTrainerCallback"]

# trainer -> the callbacks attached to it, in order (HF restores callbacks of a class in order).
_ATTACHED: weakref.WeakKeyDictionary[Any, list[STSTrainerCallback]] = weakref.WeakKeyDictionary()


class STSTrainerCallback(TrainerCallback, ExportableState):
    """Forecast at train begin, realised SAE shift every ``every_n_steps`` (HF/TRL trainers).

    Args:
        sae: sae-lens id, local SAE directory or loaded SAE (an object survives a resume when
            the callback was attached to the resumed trainer, see the module docstring).
        domains: Built-in domain names or ``{name: texts or examples}``.
        train_examples: The fine-tuning data as ``Example``, texts or ``{"prompt", "answer"}``
            dicts; ``None`` reads up to ``max_train_examples`` rows of the trainer's
            ``train_dataset`` (``text``, ``messages``, prompt/completion, plain or
            conversational).
        layer, k, every_n_steps: As in the Lightning ``STSCallback``.
        predict_config, tracker_config: Dicts (JSON) or the dataclasses.
        heldout_items: Held-out items per built-in domain for loss deltas.
        trainer: The trainer, for logging through ``trainer.log``; :meth:`attach` sets it.
        forecast: A saved forecast (``sts-lightning predict`` output dir or a ``Prediction``)
            used instead of computing one at train begin.
        evaluator: ``(model, tokenizer) -> {domain: score}`` replacing held-out loss deltas.
        link_template: Link per latent in the W&B table (``"...{layer}-res/{latent}"``).
        max_train_examples: Rows read from ``train_dataset`` when ``train_examples`` is None.
        restored: Set by HF when it rebuilds the callback from a checkpoint (``sae`` may then
            be missing: it is taken from the attached callback).
    """

    def __init__(
        self,
        sae: Any = None,
        domains: Any = None,
        train_examples: Any = None,
        layer: int | None = None,
        k: int | None = None,
        every_n_steps: int = 50,
        predict_config: dict | PredictConfig | None = None,
        tracker_config: dict | TrackerConfig | None = None,
        heldout_items: int = 32,
        trainer: Any = None,
        forecast: str | Path | Prediction | None = None,
        evaluator: Evaluator | None = None,
        link_template: str | None = None,
        max_train_examples: int = 256,
        restored: bool = False,
    ) -> None:
        if (sae is None and not restored) or not domains:
            raise ValueError("STSTrainerCallback needs `sae` and a non-empty `domains`")
        positive_int("every_n_steps", every_n_steps)
        positive_int("max_train_examples", max_train_examples)
        if train_examples is not None and not len(train_examples):
            raise ValueError("`train_examples` must hold the fine-tuning pairs, or be None")
        self.predict_config, self.tracker_config = tracking_configs(
            predict_config, tracker_config, k=k, layer=layer, every_n_steps=every_n_steps
        )
        self.sae, self.domains, self.heldout_items = sae, domains, heldout_items
        self.train_examples = None if train_examples is None else as_examples(train_examples)
        self.forecast = Prediction.load(forecast) if isinstance(forecast, (str, Path)) else forecast
        self.evaluator, self.link_template = evaluator, link_template
        self.max_train_examples = max_train_examples
        self.trainer = trainer
        if trainer is not None:
            _ATTACHED.setdefault(trainer, []).append(self)
        self.tracker: STSTracker | None = None
        self._state_dir: str | None = None  # set by HF when restoring from a checkpoint
        self._step, self._output_dir = 0, None
        self._guard = MonitorGuard("STSTrainerCallback")
        self._unlinked_warned = False

    @classmethod
    def attach(cls, trainer: Any, **kwargs: Any) -> STSTrainerCallback:
        """Build the callback for ``trainer``, add it, and return it."""
        callback = cls(trainer=trainer, **kwargs)
        trainer.add_callback(callback)
        return callback

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        original = self._attached_original()
        if original is not None:  # HF rebuilt us from a checkpoint: hand over to the original
            original._state_dir = self._state_dir
            callbacks = original.trainer.callback_handler.callbacks
            callbacks[next(i for i, c in enumerate(callbacks) if c is self)] = original
            return original.on_train_begin(
                args, state, control, model=model, processing_class=processing_class, **kwargs
            )
        self._step, self._output_dir = state.global_step, args.output_dir
        if not self._state_dir and state.global_step > 0:  # resumed, callback states not restored
            found = _state_path(args.output_dir, state.global_step)
            self._state_dir = str(found) if found.exists() else None
        tokenizer = processing_class or kwargs.get("tokenizer")
        loader = kwargs.get("train_dataloader")
        self._guard.run("forecast", self._start, state, model, tokenizer, loader, starting=True)
        if self._guard.stopped:
            self.tracker = None
        return None

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._step = state.global_step
        if self._active() and state.global_step % self.tracker_config.every_n_steps == 0:
            tokenizer = processing_class or kwargs.get("tokenizer")
            self._guard.run("measure", self._measure, state, control, model, tokenizer)

    def on_save(self, args, state, control, **kwargs):
        if self._active() and args.should_save:
            path = _state_path(args.output_dir, state.global_step)
            self._guard.run("saving its state", save_tracker_state, self.tracker.state_dict(), path)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self._active() and not self.tracker.measured_at(state.global_step):
            tokenizer = processing_class or kwargs.get("tokenizer")
            self._guard.run("measure", self._measure, state, control, model, tokenizer)
        if self._active() and state.is_world_process_zero:
            self._guard.run("report", self._report, args)

    # ------------------------------------------------------------------ work
    def _active(self) -> bool:
        return self.tracker is not None and not self._guard.stopped

    def _attached_original(self) -> STSTrainerCallback | None:
        """The attached callback this one replaces (HF rebuilt it), or None."""
        if self.trainer is not None:
            return None
        for trainer, originals in list(_ATTACHED.items()):
            live = trainer.callback_handler.callbacks
            if not any(c is self for c in live):
                continue
            rebuilt = [c for c in live if isinstance(c, STSTrainerCallback) and c.trainer is None]
            dropped = [o for o in originals if not any(o is c for c in live)]
            index = next(i for i, c in enumerate(rebuilt) if c is self)
            return dropped[index] if index < len(dropped) else None
        return None

    def _start(self, state, model, tokenizer, loader) -> None:
        if model is None or tokenizer is None:
            raise ValueError("STSTrainerCallback needs the trainer's model and processing_class")
        if self.sae is None:
            raise ValueError(
                "STSTrainerCallback was restored from a checkpoint without its `sae`: an SAE "
                "object cannot be saved in one. Attach the callback to the resumed trainer with "
                "`STSTrainerCallback.attach(trainer, sae=...)`, or pass an SAE id or directory"
            )
        self.tracker = build_tracker(
            self.sae,
            self.domains,
            self.train_examples or (lambda: self._from_dataset(loader, tokenizer)),
            device=next(model.parameters()).device,
            heldout_items=self.heldout_items,
            predict_config=self.predict_config,
            tracker_config=self.tracker_config,
            evaluator=self.evaluator,
            prediction=self.forecast,
        )
        self.train_examples = self.tracker.train_examples  # saved with the checkpoint's args
        if self._state_dir and Path(self._state_dir).exists():
            self.tracker.load_state_dict(load_tracker_state(self._state_dir))
        self._log(state, self.tracker.start(model, tokenizer))

    def _from_dataset(self, loader, tokenizer) -> list:
        dataset = getattr(self.trainer, "train_dataset", None)
        dataset = dataset if dataset is not None else getattr(loader, "dataset", None)
        if dataset is None:
            raise ValueError("STSTrainerCallback found no `train_dataset`: pass `train_examples=`")
        return dataset_examples(
            dataset,
            caller="STSTrainerCallback",
            argument="train_dataset",
            eos_token=getattr(tokenizer, "eos_token", None),
            limit=self.max_train_examples,
        )

    def _measure(self, state, control, model, tokenizer) -> None:
        metrics, alarms = self.tracker.measure(model, tokenizer, state.global_step)
        self._log(state, metrics)
        for name in alarms:
            self._guard.warn(
                f"STSTrainerCallback: held-out loss on {name!r} rose by "
                f"{metrics[f'sts/delta/{name}']:.3f} nats/token"
            )
        if alarms and self.tracker_config.stop_on_alarm:
            control.should_training_stop = True

    def _log(self, state, metrics: dict[str, float]) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
            return
        state.log_history.append({**metrics, "step": state.global_step})
        if not self._unlinked_warned:  # without the trainer, `report_to` cannot be reached
            self._unlinked_warned = True
            self._guard.warn(
                "STSTrainerCallback: no trainer, so STS metrics reach `state.log_history` only, "
                "not `report_to`; add the callback with `STSTrainerCallback.attach(trainer, ...)`"
            )

    def _report(self, args) -> None:
        from sts_lightning.monitor.plots import log_rich_hf, save_plots

        paths = save_plots(self.tracker, Path(args.output_dir) / "sts")
        if self.trainer is not None:
            log_rich_hf(
                self.trainer.callback_handler.callbacks, self.tracker, paths, self.link_template
            )

    # ------------------------------------------------------------------ resume (HF)
    def state(self) -> dict:
        """JSON for ``trainer_state.json``; :meth:`on_save` writes the tensors next to it."""
        saved = self._active() and self._output_dir is not None
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
                "link_template": self.link_template,
                "max_train_examples": self.max_train_examples,
                "restored": True,
            },
            "attributes": {
                "_state_dir": str(_state_path(self._output_dir, self._step)) if saved else None
            },
        }


def _state_path(output_dir: str | Path, step: int) -> Path:
    """Where the tracker state of the checkpoint at ``step`` lives (HF's folder naming)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}" / "sts_tracker"

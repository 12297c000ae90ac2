"""Wall time of SmolLM2 SFT with and without STSCallback, side by side in one run.

The forecast is a one-time cost before step 1 (and can be loaded from ``sts-lightning predict``
output with ``forecast=``), so it is timed separately; the recurring cost is one measurement every
``every_n_steps``. Both runs start from the same weights and data.

    python benchmarks/callback_overhead.py [--steps 10] [--every 5] [--default-every 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

from lightning.pytorch import Callback, Trainer, seed_everything

from sts_lightning.callbacks import STSCallback
from sts_lightning.data.domains import load_training_set
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.training.data import SFTDataModule
from sts_lightning.training.sft import SFTModule

DOMAINS = [
    "math",
    "physics",
    "chemistry",
    "computer_science",
    "engineering",
    "biology",
    "health",
    "economics",
    "law",
    "history",
    "philosophy",
    "code",
]


class _StepTimer(Callback):
    """Wall time from the first batch start to the end of training (excludes start-up)."""

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 0 and not hasattr(self, "start"):
            self.start = time.perf_counter()

    def on_train_end(self, trainer, *args):
        self.seconds = time.perf_counter() - self.start


def _run(steps: int, callbacks: list) -> float:
    seed_everything(0)
    module = SFTModule("embedded:smollm2", learning_rate=5e-5, save_hf_on_fit_end=False)
    data = SFTDataModule(
        train="arithmetic", train_size=steps * 16, batch_size=16, max_length=256, seed=0
    )
    timer = _StepTimer()
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tempfile.mkdtemp(prefix="sts-overhead-"),  # plots land here
        callbacks=[timer, *callbacks],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=data)
    return timer.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--default-every", type=int, default=50)
    p.add_argument("--sae", default=None, help="SAE id/dir (default: the embedded default's)")
    p.add_argument("--forecast", default=None, help="a `sts-lightning predict` output dir to reuse")
    args = p.parse_args()

    from sts_lightning.forecast.job import load_job
    from sts_lightning.model.loading import load_model_and_tokenizer
    from sts_lightning.model.sae_source import resolve_run_sae

    model, tok = load_model_and_tokenizer("embedded:smollm2")
    recipe = load_job("recipes/predict_arithmetic_smollm2.yaml")
    sae = args.sae or resolve_run_sae(recipe, model, tok)
    train = load_training_set("arithmetic", 256, seed=0)
    callback = STSCallback(
        sae,
        domains=DOMAINS,
        train_examples=train,
        every_n_steps=args.every,
        predict_config=PredictConfig(
            layer=12,
            max_norm=500.0,
            domain_demos=2,
            train_tokens=6000,
            domain_tokens=3000,
            progress=False,
        ),
        forecast=args.forecast,
    )

    base = _run(args.steps, [])
    with_cb = _run(args.steps, [callback])  # includes the forecast before step 1
    tracker = callback.tracker
    forecast = tracker.prediction.timings["total"]  # when loaded: the time it took in `predict`
    n_measure = len(tracker.history)
    per_measure = (with_cb - base) / n_measure
    step = base / args.steps
    print(f"SmolLM2-135M full SFT, batch 16, {args.steps} steps, 12 domains, on this machine")
    print(f"  without callback: {base:7.1f} s  ({step:.2f} s/step)")
    print(
        f"  with callback   : {with_cb:7.1f} s  ({n_measure} measurements; forecast "
        f"{forecast:.0f} s before step 1, not in these times)"
    )
    print(f"  one measurement : {per_measure:7.1f} s = {per_measure / step:.2f} steps")
    print(
        f"  overhead at every_n_steps={args.default_every}: "
        f"{per_measure / (args.default_every * step):.1%} of training wall time"
    )


if __name__ == "__main__":
    main()

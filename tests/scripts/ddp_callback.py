"""Run a tiny model with STSCallback on N CPU processes; each rank writes what its callback saw.

    python tests/scripts/ddp_callback.py OUT_DIR DEVICES

Used by tests/test_distributed.py (Lightning's "ddp" strategy re-launches this script per rank).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sts_lightning.callbacks import STSCallback
from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.monitor.tracker import TrackerConfig
from tests.callbacks.test_sts import TEXTS, UserModule, _loader
from tests.conftest import make_tiny_model, make_tiny_sae, make_tiny_tokenizer


def main(out: Path, devices: int) -> None:
    seed_everything(0)
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model("llama", len(tokenizer)).train()
    callback = STSCallback(
        make_tiny_sae(),
        domains=TEXTS,
        train_examples=[Example(t) for t in TEXTS["arith"]],
        k=8,
        every_n_steps=2,
        predict_config=PredictConfig(
            domain_demos=1, train_tokens=200, domain_tokens=200, progress=False
        ),
        tracker_config=TrackerConfig(probe_tokens=200, eval_tokens=100),
    )
    trainer = Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=devices,
        strategy="ddp",
        callbacks=[callback],
        logger=False,
        default_root_dir=str(out),  # the callback's plots go here, not into the caller's cwd
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Per-rank batch 4 on 2 ranks = one batch of 8 on 1 rank: the same step.
        trainer.fit(
            UserModule(model, tokenizer),
            _loader(tokenizer, TEXTS["arith"] * 4, batch_size=8 // devices),
        )
    pred = callback.tracker.prediction
    result = {
        "top": pred.top_latents.tolist(),
        "shift": pred.shift.tolist(),
        "act": pred.scores("act"),
        "history": callback.tracker.history,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), int(sys.argv[2]))

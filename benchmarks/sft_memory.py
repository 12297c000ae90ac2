"""Benchmark: the peak memory and step time of one SmolLM2 fine-tune, per memory setting.

The README experiment's fine-tune (SmolLM2-135M-Instruct, full fine-tuning with the tied
embedding frozen, fused AdamW, bf16 autocast where the CPU has native bf16, batches of 16
length-grouped examples of ``--task``, ``family`` by default), each setting in a fresh
process, one after the other:

- ``whole``: the batch of 16 in one forward and backward;
- ``micro8`` / ``micro``: ``SFTModule(micro_batch_size=8 / 4)``, the same gradient from parts
  of 8 / 4 rows;
- ``micro+ckpt``: the same with gradient checkpointing;
- ``micro+lora``: parts of 4 rows training a rank-16 LoRA adapter on every linear layer
  (:class:`~sts_lightning.training.lora.LoraConfig`'s defaults) instead of the weights;
  ``micro2+lora`` the same in parts of 2 rows; ``micro+lora-percall`` as ``micro+lora`` with
  autocast's own cast of each Linear's input (no ``share_input_casts``),
  ``micro+lora-keepcasts`` with autocast's bf16 copy of each frozen weight kept for backward
  (no ``recast_frozen_weights``); ``micro+lora+ckpt``,
  ``micro8+lora+ckpt`` and ``whole+lora+ckpt`` with gradient checkpointing, in parts of 4 or 8
  rows or whole.

Each process reports its peak resident size (``VmHWM``), what it held before training (imports,
tokenizer, data) and the median seconds per optimizer step after the first. The floor of full
fine-tuning is the weights, their gradients and AdamW's two moments: ~4 bytes x (134.5M +
3 x 106.2M trained) = 1.8 GB above the process.

    .venv/bin/python benchmarks/sft_memory.py [--steps 6] [--task family]
        [--settings whole micro8 micro micro+ckpt]

A script: it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETTINGS = {
    "whole": {"micro_batch_size": None, "gradient_checkpointing": False},
    "micro8": {"micro_batch_size": 8, "gradient_checkpointing": False},
    "micro": {"micro_batch_size": 4, "gradient_checkpointing": False},
    "micro+ckpt": {"micro_batch_size": 4, "gradient_checkpointing": True},
    "micro+lora": {"micro_batch_size": 4, "gradient_checkpointing": False, "lora": True},
    "micro2+lora": {"micro_batch_size": 2, "gradient_checkpointing": False, "lora": True},
    "micro+lora-percall": {"micro_batch_size": 4, "gradient_checkpointing": False, "lora": True},
    "micro+lora-keepcasts": {"micro_batch_size": 4, "gradient_checkpointing": False, "lora": True},
    "micro+lora+ckpt": {"micro_batch_size": 4, "gradient_checkpointing": True, "lora": True},
    "micro8+lora+ckpt": {"micro_batch_size": 8, "gradient_checkpointing": True, "lora": True},
    "whole+lora+ckpt": {"micro_batch_size": None, "gradient_checkpointing": True, "lora": True},
}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(x for x in f if x.startswith(field)).split()[1]) / 1024


def _child(setting: str, steps: int, batch: int, task: str) -> dict:
    from lightning.pytorch import Callback, Trainer, seed_everything

    from sts_lightning.data.training_sets import load_training_set
    from sts_lightning.model.precision import native_bf16
    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.training.lora import LoraConfig
    from sts_lightning.training.sft import SFTModule

    if setting.endswith("-percall"):  # autocast's own cast per layer (no shared input casts)
        from sts_lightning.model import precision

        precision.share_input_casts = lambda model: []
    if setting.endswith("-keepcasts"):  # autocast keeps a bf16 copy of each frozen weight
        from sts_lightning.model import precision

        precision.recast_frozen_weights = lambda model: []
    examples = load_training_set(task, batch * steps, seed=0)
    seed_everything(0)
    kw = dict(SETTINGS[setting])
    kw["lora"] = LoraConfig() if kw.pop("lora", False) else None
    module = SFTModule("embedded:smollm2", learning_rate=1e-4, save_hf_on_fit_end=False, **kw)
    data = SFTDataModule(examples, train_size=None, batch_size=batch, seed=0)
    held = _status_mb("VmRSS")
    times: list[float] = []

    class Clock(Callback):
        def on_train_batch_start(self, *args) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            times.append(time.perf_counter() - self.t)

    trainer = Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Clock()], gradient_clip_val=1.0,
        precision="bf16-mixed" if native_bf16() else "32-true",
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return {
        "held_mb": held,
        "peak_mb": _status_mb("VmHWM"),
        "s_per_step": statistics.median(times[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--task", default="family", help="a built-in training set")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.steps, args.batch, args.task)))
        return
    rows = {}
    for setting in args.settings:
        cmd = [sys.executable, __file__, "--child", setting, "--steps", str(args.steps),
               "--batch", str(args.batch), "--task", args.task]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[setting] = json.loads(out.strip().splitlines()[-1])
    first = rows[args.settings[0]]
    print(f"SmolLM2 SFT on {args.task}, batch {args.batch}, {args.steps} steps, a process each")
    print(
        f"{'setting':<12} {'held MB':>8} {'peak MB':>8} {'s/step':>7} {'peak ×':>7} {'time ×':>7}"
    )
    for setting, row in rows.items():
        peak, step = row["peak_mb"] / first["peak_mb"], row["s_per_step"] / first["s_per_step"]
        print(
            f"{setting:<12} {row['held_mb']:>8.0f} {row['peak_mb']:>8.0f} {row['s_per_step']:>7.2f}"
            f" {peak:>7.2f} {step:>7.2f}"
        )


if __name__ == "__main__":
    main()

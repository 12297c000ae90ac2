"""Add STS to your Lightning script: a plain LightningModule around an HF model, one callback.

    python examples/lightning_sts.py                       # embedded SmolLM2 + its cached SAE
    python examples/lightning_sts.py --model DIR --sae SAE_DIR --steps 8

The module below is what any user writes; the only STS line is ``STSCallback(...)`` in
``callbacks=``. Metrics (forecast, realised shift, overlap@k, correlation) land in every logger,
here a CSVLogger under ``--out``.
"""

from __future__ import annotations

import argparse

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from sts_lightning.callbacks import STSCallback
from sts_lightning.data.domains import load_training_set
from sts_lightning.data.prompts import encode_example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.model.loading import load_model_and_tokenizer
from sts_lightning.monitor.tracker import TrackerConfig


class CausalLMModule(LightningModule):
    def __init__(self, model, tokenizer, lr: float = 1e-4):
        super().__init__()
        self.model, self.tokenizer, self.lr = model, tokenizer, lr

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr)


def sft_loader(tokenizer, examples, batch_size: int) -> DataLoader:
    """Chat-formatted prompt/answer pairs; the loss is on the answer tokens only."""

    def collate(batch):
        encoded = [encode_example(tokenizer, e) for e in batch]
        width = max(len(e.input_ids) for e in encoded)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full_like(ids, -100)
        for i, e in enumerate(encoded):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            start, end = e.span("answer")
            labels[i, start:end] = ids[i, start:end]
        mask = torch.zeros_like(ids)
        for i, e in enumerate(encoded):
            mask[i, : len(e.input_ids)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return DataLoader(examples, batch_size=batch_size, shuffle=True, collate_fn=collate)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="embedded:smollm2")
    p.add_argument("--sae", default=None, help="SAE id or dir (default: the embedded default's)")
    p.add_argument("--domains", nargs="+", default=["math", "law", "code"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--k", type=int, default=100, help="shifted latents tracked")
    p.add_argument("--budget", type=int, default=2000, help="forecast token budgets")
    p.add_argument("--out", default="runs/lightning_sts")
    args = p.parse_args(argv)

    model, tokenizer = load_model_and_tokenizer(args.model)
    train = load_training_set("arithmetic", 256, seed=0)
    sae = args.sae or embedded_sae(model, tokenizer)
    trainer = Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        logger=CSVLogger(args.out),
        enable_checkpointing=False,
        callbacks=[
            STSCallback(  # <- the one line
                sae,
                domains=args.domains,
                train_examples=train,
                k=args.k,
                every_n_steps=args.every,
                predict_config=PredictConfig(
                    domain_demos=1,
                    train_tokens=args.budget,
                    domain_tokens=args.budget,
                    progress=False,
                ),
                tracker_config=TrackerConfig(probe_tokens=args.budget // 2),
            )
        ],
    )
    trainer.fit(CausalLMModule(model.train(), tokenizer), sft_loader(tokenizer, train, 8))
    print(f"metrics: {trainer.logger.log_dir}/metrics.csv, plots: {trainer.logger.log_dir}/sts")


def embedded_sae(model, tokenizer):
    """The embedded default's SAE, trained and cached on first use exactly as `predict` does."""
    from pathlib import Path

    from sts_lightning.forecast.job import load_job
    from sts_lightning.model.sae_source import resolve_run_sae

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "predict_arithmetic_smollm2.yaml"
    return resolve_run_sae(load_job(recipe), model, tokenizer)


if __name__ == "__main__":
    main()

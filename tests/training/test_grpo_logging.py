"""GRPO's completions table (grpo_logging.py): TRL's columns, through a W&B logger."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import torch

from sts_lightning.data.batching import collate_rows
from sts_lightning.training.grpo import GRPOConfig, GRPOModule

ROWS = [
    {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i)}
    for i in range(4)
]


def fit(model, tokenizer, logger, steps=2):
    from trl.rewards import accuracy_reward

    grpo = GRPOConfig(num_generations=2, max_completion_length=4, log_completions=True)
    module = GRPOModule(copy.deepcopy(model), tokenizer, grpo=grpo,
                        reward_funcs=[accuracy_reward])  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(ROWS, batch_size=2, collate_fn=collate_rows)
    trainer.fit(module, loader)
    return module


def test_completions_table_reaches_wandb(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger
    from trl.rewards import accuracy_reward

    # W&B keeps an earlier run's settings in this process (its folder, maybe relative): find
    # the run's folder from the run itself, and keep any relative one under tmp_path.
    monkeypatch.chdir(tmp_path)
    logger = WandbLogger(project="test", save_dir=str(tmp_path), offline=True)
    fit(tiny_llama, tiny_tokenizer, logger)
    run_dir = Path(logger.experiment.dir).resolve().parent
    logger.experiment.finish()
    tables = sorted(run_dir.rglob("completions_*.table.json"))
    assert len(tables) == 2, run_dir  # one per rollout (log_every_n_steps=1)
    table = json.loads(tables[-1].read_text())
    # TRL's columns: its accuracy_reward adds three through log_extra.
    assert table["columns"] == [
        "step", "prompt", "completion", "accuracy_reward",
        "answer_parsed", "gold_parsed", "solution", "advantage",
    ]  # fmt: skip
    rows = table["data"]
    assert len(rows) == 4 and {row[0] for row in rows} == {2}  # 2 prompts x 2, after step 2
    for row in rows:
        completion = json.loads(row[2])
        assert completion[0]["role"] == "assistant"
        assert row[3] == accuracy_reward([completion], [row[6]])[0]
    # Advantages of a group sum to 0 (group-relative).
    assert abs(rows[0][-1] + rows[1][-1]) < 1e-5 and abs(rows[2][-1] + rows[3][-1]) < 1e-5


def test_without_a_wandb_logger_the_table_is_skipped_once(tiny_llama, tiny_tokenizer, caplog):
    with caplog.at_level(logging.INFO):
        fit(tiny_llama, tiny_tokenizer, logger=False)
    notes = [r for r in caplog.records if "no WandbLogger" in r.getMessage()]
    assert len(notes) == 1

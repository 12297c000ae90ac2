"""Reward functions are called as TRL 1.16's GRPOTrainer calls them (reward_calls.py), and TRL's
own reward functions run unchanged inside GRPOModule on conversational data."""

from __future__ import annotations

import copy
import json

import lightning.pytorch as pl
import pytest
import torch

from sts_lightning.data.batching import collate_rows
from sts_lightning.training.grpo import GRPOConfig, GRPOModule
from sts_lightning.training.reward_calls import (
    RewardLog,
    completion_text,
    score_completions,
    trainer_state,
)

CHAT_ROWS = [
    {
        "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
        "solution": str(2 * i),
        "difficulty": i,
    }
    for i in range(4)
]


def test_score_completions_passes_trls_keywords():
    seen = {}

    def spy(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, **cols):
        seen.update(cols, prompts=prompts, completions=completions, state=trainer_state)
        log_extra("parsed", ["x", "y"])
        log_metric("hits", 2.0)
        return [0.5, None]

    log, state = RewardLog(), trainer_state()
    columns = {"answer": ["1", "1"], "completion": ["a", "b"], "completion_ids": [[9], [9]]}
    out = score_completions(
        [spy], ["p", "p"], ["a", "b"], [[1], [2]], columns, state=state, log=log
    )
    assert out[0, 0] == 0.5 and out[1, 0].isnan()
    # TRL drops the `completion` / `completion_ids` columns; the real ids arrive instead.
    assert seen["answer"] == ["1", "1"] and "completion" not in seen
    assert seen["state"] is state and state.global_step == 0
    assert log.extra == {"parsed": ["x", "y"]} and log.metrics == {"hits": [2.0]}


def test_trainer_state_follows_the_lightning_trainer():
    from transformers import TrainerState

    class Fit:  # what trainer_state reads from a Lightning trainer
        current_epoch, num_training_batches, max_steps, global_step = 1, 4, -1, 6
        log_every_n_steps, max_epochs, local_rank, is_global_zero = 5, 3, 0, True
        estimated_stepping_batches = 12
        state = type("S", (), {"fn": "fit"})()

    state = trainer_state(Fit(), 2, 100, 2)
    assert isinstance(state, TrainerState)
    assert (state.global_step, state.epoch, state.max_steps) == (6, 1.5, 24)  # 12 batches x μ
    assert state.num_input_tokens_seen == 100 and state.logging_steps == 5


def test_completion_text_reads_plain_and_conversational_completions():
    assert completion_text("19") == "19"
    assert completion_text([{"role": "assistant", "content": "19"}]) == "19"
    assert completion_text(None) == ""


def fit_chat(tiny_llama, tiny_tokenizer, reward_funcs, max_steps=2, data=None):
    grpo = GRPOConfig(num_generations=2, max_completion_length=4)
    module = GRPOModule(copy.deepcopy(tiny_llama), tiny_tokenizer, grpo=grpo,
                        reward_funcs=reward_funcs)  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    if data is None:
        data = torch.utils.data.DataLoader(CHAT_ROWS, batch_size=2, collate_fn=collate_rows)
    trainer.fit(module, data)
    return trainer


def test_trl_rewards_run_unchanged_on_conversational_data(tiny_llama, tiny_tokenizer):
    from trl.rewards import accuracy_reward, think_format_reward

    calls = []

    def column_reward(prompts, completions, solution, difficulty, trainer_state, **kwargs):
        calls.append((prompts, completions, solution, difficulty, trainer_state))
        kwargs["log_metric"]("difficulty_mean", sum(difficulty) / len(difficulty))
        # What TRL's rewards would score, computed here from the same inputs.
        calls[-1] += (accuracy_reward(completions, solution), think_format_reward(completions))
        return [float(d) for d in difficulty]

    trainer = fit_chat(
        tiny_llama, tiny_tokenizer, [accuracy_reward, think_format_reward, column_reward]
    )
    metrics = trainer.callback_metrics
    assert len(calls) == 2 and [c[4].global_step for c in calls] == [0, 1]
    assert calls[0][4].max_steps == 2 and calls[1][4].epoch == 0.5  # 2 batches per epoch
    prompts, completions, solution, difficulty, _, accuracy, think = calls[-1]
    assert prompts[0] == prompts[1] and prompts[0] in [r["prompt"] for r in CHAT_ROWS]
    assert all(
        c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in completions
    )
    assert len(completions) == 4 and solution[0] == solution[1] and difficulty[2] == difficulty[3]
    # The logged means are TRL's own rewards of the last rollout (a tiny random model: 0 or 1).
    mean = sum(accuracy) / len(accuracy)
    assert metrics["train/rewards/accuracy_reward/mean"].item() == pytest.approx(mean)
    assert metrics["train/rewards/think_format_reward/mean"].item() == sum(think) / 4
    assert metrics["train/rewards/column_reward/mean"].item() == sum(difficulty) / 4
    assert metrics["train/difficulty_mean"].item() == sum(difficulty) / 4  # log_metric


def test_our_rewards_score_conversational_completions():
    from sts_lightning.training.rewards import accuracy_reward, format_reward

    chat = [[{"role": "assistant", "content": t}] for t in ("19", "It is 18.")]
    prompts = [[{"role": "user", "content": "q"}]] * 2
    assert accuracy_reward(prompts, chat, answer=["19", "19"]) == [1.0, 0.0]
    assert format_reward(prompts, chat) == [1.0, 0.0]


@pytest.mark.parametrize("columns", [{"answer_column": None}, {}], ids=["no-answer", "default"])
def test_trl_rewards_run_through_the_prompt_data_module(
    tiny_llama, tiny_tokenizer, tmp_path, columns
):
    from trl.rewards import accuracy_reward, think_format_reward

    from sts_lightning.training.data import PromptDataModule
    from sts_lightning.training.rollout import encode_prompts

    system = {"role": "system", "content": "Be brief."}
    rows = [{"prompt": [system, *r["prompt"]], "solution": r["solution"]} for r in CHAT_ROWS]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    calls = []

    def spy(prompts, completions, solution, **kwargs):
        calls.append((prompts, completions, solution))
        return [0.0] * len(completions)

    # TRL's prompt-only format: no answer column, `solution` passed through by its name; it
    # loads as it is with the default `answer_column` too.
    data = PromptDataModule(str(path), train_size=None, batch_size=2, **columns)
    trainer = fit_chat(
        tiny_llama, tiny_tokenizer, [accuracy_reward, think_format_reward, spy], data=data
    )
    assert trainer.global_step == 2 and len(calls) == 2
    prompts, completions, solution = calls[-1]
    assert all(p in [r["prompt"] for r in rows] and p[0] == system for p in prompts)
    assert all(
        c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in completions
    )
    assert solution == [r["solution"] for p in prompts for r in rows if r["prompt"] == p]
    metrics = trainer.callback_metrics
    accuracy = accuracy_reward(completions, solution)  # what TRL's function scores, unchanged
    assert metrics["train/rewards/accuracy_reward/mean"].item() == pytest.approx(
        sum(accuracy) / len(accuracy)
    )
    assert metrics["train/rewards/think_format_reward/mean"].item() == pytest.approx(
        sum(think_format_reward(completions)) / len(completions)
    )
    # The chat template renders the system turn given, not the template's default one.
    ids, mask = encode_prompts(tiny_tokenizer, [rows[0]["prompt"]])
    text = tiny_tokenizer.decode(ids[0][mask[0].bool()])
    assert "Be brief." in text and "helpful assistant" not in text and "0 + 0?" in text

"""The rollout half of GRPO, as plain functions: prompts → sampled completions → rewards.

Read top to bottom in the order the data flows through one GRPO step:

1. :func:`split_batch`: the ``"prompt"`` column and the others (for the reward functions).
2. :func:`encode_prompts`: apply the chat template (``add_generation_prompt=True``) and
   left-pad, so every completion starts at the same column. A prompt is a message list
   (conversational, as TRL) or a string, taken as the user turn (TRL would tokenize a string
   as raw text; these prompts are questions for chat models).
3. :func:`sample_completions`: ``G`` sampled completions per prompt with HF ``generate``; the
   completion mask keeps tokens up to and including the first EOS (TRL's convention).
4. :func:`~sts_lightning.training.reward_calls.score_completions`: each reward function, once,
   with TRL's keywords; conversational prompts get message-list completions, as in TRL.

:func:`rollout` runs 1-4 on a batch; :func:`~sts_lightning.training.logps.completion_logps`
scores the result. No Lightning here: the GRPO module calls these.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from sts_lightning.training.grpo_config import GRPOConfig
from sts_lightning.training.reward_calls import (
    RewardFunc,
    RewardLog,
    is_conversational,
    score_completions,
)

__all__ = [
    "encode_prompts",
    "eos_token_ids",
    "rollout",
    "sample_completions",
    "seeded_sampling",
    "split_batch",
]


def split_batch(batch: Any) -> tuple[list[Any], dict[str, list[Any]]]:
    """``(prompts, other columns)`` from a dict of lists (or a list of dicts).

    A column holding one value for the whole batch (a validation loader's ``"name"``) is
    repeated for every prompt; tensors become lists.

    Example:
        >>> split_batch({"prompt": ["a", "b"], "answer": ["1", "2"], "name": "val"})
        (['a', 'b'], {'answer': ['1', '2'], 'name': ['val', 'val']})
    """
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict):
        batch = {key: [row[key] for row in batch] for key in batch[0]}
    if not isinstance(batch, dict) or "prompt" not in batch:
        raise ValueError("a GRPO batch must be a dict of lists with a 'prompt' key")
    prompts = list(batch["prompt"])
    columns = {}
    for key, values in batch.items():
        if isinstance(values, torch.Tensor):
            values = values.tolist() if values.dim() else values.item()
        if isinstance(values, (list, tuple)) and len(values) == len(prompts):
            columns[key] = list(values)
        else:
            columns[key] = [values] * len(prompts)
    del columns["prompt"]
    return prompts, columns


@contextmanager
def seeded_sampling(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's RNG seeded by ``seed``, restoring the outer RNG state after.

    Sampling then depends on the seed only, not on what ran before: a run resumed from a
    checkpoint draws the same completions at a given step as a run never stopped.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed % (2**63))
        yield


def encode_prompts(
    tokenizer,
    prompts: Sequence[str | list[dict[str, str]]],
    *,
    system_prompt: str | None = None,
    use_chat_template: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize prompts for generation, left-padded.

    Args:
        tokenizer: A Hugging Face tokenizer with a pad token.
        prompts: User turns (strings) or whole conversations (lists of ``{"role", "content"}``).
        system_prompt: An explicit system turn before each user turn; ``None`` keeps whatever
            the chat template inserts.
        use_chat_template: ``False`` tokenizes the strings as raw text (BOS added by the
            tokenizer's own rules).

    Returns:
        ``input_ids`` and ``attention_mask``, both ``(B, P)``, padded on the left.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("`tokenizer` needs a pad token to batch prompts")
    rows = []
    for prompt in prompts:
        if use_chat_template:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            if system_prompt is not None and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system_prompt}, *messages]
            text = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            # The template already wrote every special token it wants.
            rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            if not isinstance(prompt, str):
                raise TypeError("`prompts` must be strings when `use_chat_template` is False")
            rows.append(tokenizer(prompt)["input_ids"])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config stops on."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured]) - {None}
    return sorted(ids)


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One completion per row of ``input_ids`` (repeat rows beforehand for ``G`` per prompt).

    Args:
        model: A causal LM (or a peft model wrapping one).
        tokenizer: Its tokenizer (pad and EOS ids).
        input_ids: Left-padded prompts, ``(N, P)``.
        attention_mask: Their mask, ``(N, P)``.
        max_new_tokens: Completion budget (TRL's ``max_completion_length``).
        do_sample: ``False`` decodes greedily (validation).
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass; 1.0 disables it.
        top_k: Top-k sampling; 0 disables it (TRL's default).

    Returns:
        ``completion_ids`` ``(N, C)`` (pad after the first EOS) and ``completion_mask``
        ``(N, C)``: 1 up to and including the first EOS.
    """
    from transformers import GenerationConfig

    eos = eos_token_ids(model, tokenizer)
    # Every processor setting is explicit: `generate` fills unset ones from the model's own
    # generation config (Qwen2.5 ships repetition_penalty=1.05, top_k=20), which would sample
    # from a distribution other than the one the loss scores.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    out = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=config
    )
    completion_ids = out[:, input_ids.size(1) :]  # (N, C)
    is_eos = torch.isin(completion_ids, torch.tensor(eos, device=completion_ids.device))
    # First EOS per row (C when there is none); everything after it is masked out.
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), completion_ids.size(1))
    positions = torch.arange(completion_ids.size(1), device=completion_ids.device)
    completion_mask = (positions.unsqueeze(0) <= first.unsqueeze(1)).long()  # (N, C)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return completion_ids, completion_mask


@torch.no_grad()
def rollout(
    model,
    tokenizer,
    batch: Any,
    reward_funcs: Sequence[RewardFunc],
    cfg: GRPOConfig,
    *,
    seed: int | None,
    system_prompt: str | None = None,
    state: Any = None,
    log: RewardLog | None = None,
) -> dict[str, Any]:
    """Sample completions for a batch of prompts and score them with every reward function.

    Args:
        model: The policy (a causal LM or a peft model), sampled in eval mode.
        tokenizer: Its tokenizer.
        batch: A dict of lists with a ``"prompt"`` key (strings, or message lists); other
            columns reach the reward functions.
        reward_funcs: TRL-signature reward functions.
        cfg: Sampling settings (``num_generations``, ``max_completion_length``, ...).
        seed: Seeds the sampling of ``cfg.num_generations`` completions per prompt (truncated
            ones masked when ``cfg.mask_truncated_completions``); ``None``: one greedy
            completion per prompt (validation).
        system_prompt: An explicit system turn; ``None`` keeps the chat template's default.
        state: The reward functions' ``trainer_state``.
        log: Receives the reward functions' ``log_extra``/``log_metric`` calls.

    Returns:
        With ``N = B * G`` rows (groups contiguous), ``P`` prompt and ``C`` completion columns:
        ``input_ids`` / ``attention_mask`` ``(N, P + C)``, ``completion_mask`` ``(N, C)``,
        ``rewards_per_func`` ``(N, F)`` (NaN: None), ``length`` ``(N,)`` (completion tokens),
        ``prompt_length`` ``(N,)``, ``truncated`` ``(N,)`` (bool: no EOS within the budget),
        and the lists ``prompts`` and ``completions`` the reward functions saw.
    """
    train, device = seed is not None, next(model.parameters()).device
    prompts, columns = split_batch(batch)
    g = cfg.num_generations if train else 1
    ids, mask = encode_prompts(tokenizer, prompts, system_prompt=system_prompt)
    ids = ids.repeat_interleave(g, 0).to(device)  # (B * G, P), groups contiguous
    mask = mask.repeat_interleave(g, 0).to(device)
    # Eval mode while sampling: with gradient checkpointing, train mode disables the KV cache.
    training = model.training
    model.eval()
    try:
        with seeded_sampling(seed, device) if train else nullcontext():
            completion_ids, completion_mask = sample_completions(
                model, tokenizer, ids, mask, max_new_tokens=cfg.max_completion_length,
                do_sample=train, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
            )  # fmt: skip
    finally:
        model.train(training)
    kept = [c[m.bool()].tolist() for c, m in zip(completion_ids, completion_mask, strict=True)]
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    # TRL: conversational prompts get completions as one assistant message each.
    chat = is_conversational(prompts[0]) if prompts else False
    completions = [[{"role": "assistant", "content": t}] for t in texts] if chat else texts
    prompts = [p for p in prompts for _ in range(g)]
    rewards_per_func = score_completions(
        reward_funcs, prompts, completions, kept,
        {key: [v for v in values for _ in range(g)] for key, values in columns.items()},
        state=state, log=log,
    )  # fmt: skip
    # Truncated, as TRL: the last token is neither an EOS nor the pad token (the mask has no 0).
    stops = torch.tensor([*eos_token_ids(model, tokenizer), tokenizer.pad_token_id], device=device)
    truncated = (completion_mask[:, -1] == 1) & ~torch.isin(completion_ids[:, -1], stops)
    if train and cfg.mask_truncated_completions:
        completion_mask = completion_mask * ~truncated[:, None]
    return {
        "input_ids": torch.cat([ids, completion_ids], 1),  # (B * G, P + C)
        "attention_mask": torch.cat([mask, completion_mask], 1),
        "completion_mask": completion_mask,  # (B * G, C)
        "rewards_per_func": rewards_per_func.to(device),  # (B * G, F), NaN = None
        "length": torch.tensor([float(len(k)) for k in kept], device=device),
        "prompt_length": mask.sum(1).float(),
        "truncated": truncated,
        "prompts": prompts,
        "completions": completions,
    }

"""Per-token log-probabilities (and entropies) of completion tokens under a causal LM.

GRPO scores each rollout with these: the policy with grad for the loss, the old policy and the
reference without. The logits are divided by the sampling temperature first, as TRL does, so the
ratio compares the distribution the completions were drawn from.
"""

from __future__ import annotations

import torch

__all__ = ["completion_logps"]


def completion_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    *,
    temperature: float = 1.0,
    batch_size: int | None = None,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the last ``n_completion`` tokens of each row, logits / temperature.

    Position ids follow the attention mask (as ``generate`` does for left-padded prompts), and
    only the completion's logits are materialised (``logits_to_keep``).

    Args:
        model: A causal LM.
        input_ids: Prompt + completion, ``(N, P + C)``.
        attention_mask: ``(N, P + C)``.
        n_completion: ``C``.
        temperature: The sampling temperature (TRL scores the tempered distribution).
        batch_size: Rows per forward pass; ``None`` does all at once.
        with_entropy: Also return the entropy of each position's tempered distribution
            (TRL's logged ``entropy``), computed without grad.

    Returns:
        ``(N, C)`` float32 log-probabilities (meaningless where the completion mask is 0), and
        with ``with_entropy`` a ``(N, C)`` float32 entropy in nats.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    step = batch_size or input_ids.size(0)
    chunks, entropies = [], []
    for start in range(0, input_ids.size(0), step):
        rows = slice(start, start + step)
        logits = model(
            input_ids=input_ids[rows],
            attention_mask=attention_mask[rows],
            position_ids=position_ids[rows],
            logits_to_keep=n_completion + 1,
            use_cache=False,
        ).logits[:, -n_completion - 1 : -1]  # (b, C, V): position t predicts token t + 1
        logits = logits.float() / temperature
        targets = input_ids[rows, -n_completion:].unsqueeze(-1)  # (b, C, 1)
        # gather - logsumexp avoids a second (b, C, V) tensor from log_softmax.
        norm = logits.logsumexp(-1)  # (b, C)
        chunks.append(logits.gather(-1, targets).squeeze(-1) - norm)
        if with_entropy:
            with torch.no_grad():  # H = logsumexp(z) - Σ softmax(z) · z
                entropies.append(norm - (logits.softmax(-1) * logits).sum(-1))
    logps = torch.cat(chunks)
    return (logps, torch.cat(entropies)) if with_entropy else logps

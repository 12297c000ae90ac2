"""Which tokens of a chat-templated conversation the assistant wrote, for any chat template.

TRL finds assistant tokens with ``return_assistant_tokens_mask``, which needs ``{% generation %}``
markers in the template; most shipped templates (ChatML as in SmolLM2, Llama-3) have none. Here
the template is only rendered: for assistant turn ``i`` the conversation before it is tokenized
with the generation prompt (the turn starts where that prefix ends inside the whole
conversation's tokens) and again up to and including turn ``i`` (it ends there). Chat templates
open every turn with a special token, which tokenizers never merge with its neighbours, so these
prefixes are token prefixes of the whole.

A turn's tokens are its content and whatever the template closes it with (``<|im_end|>\\n`` in
ChatML, ``<|eot_id|>`` in Llama-3): what the model must generate after the generation prompt,
the end-of-turn token included so that it learns to stop. (TRL's patched ChatML templates
also put the newline after ``<|im_start|>assistant`` inside the turn; here it belongs to the
generation prompt, which the model is given at inference.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

__all__ = ["assistant_mask", "chat_ids", "common_prefix_length"]

log = logging.getLogger(__name__)

_warned: set[str] = set()


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share.

    Example:
        >>> common_prefix_length([1, 2, 3], [1, 2, 4, 5])
        2
    """
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def chat_ids(tokenizer, messages: list, *, add_generation_prompt: bool = False) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template (as TRL tokenizes)."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(out["input_ids"])


def _boundary(tokenizer, messages: list, ids: list[int], generation_prompt: bool) -> int:
    """Where the rendering of ``messages`` ends inside ``ids`` (their common prefix)."""
    prefix = chat_ids(tokenizer, messages, add_generation_prompt=generation_prompt)
    n = common_prefix_length(prefix, ids)
    if n < len(prefix) and "prefix" not in _warned:
        # As TRL for prompts: the mask then stops where the two renderings part.
        _warned.add("prefix")
        log.warning(
            "the chat template renders a conversation prefix differently from the same turns "
            "inside the whole conversation (%r); assistant masks may lose tokens there",
            tokenizer.decode(prefix[n:]),
        )
    return n


def assistant_mask(tokenizer, messages: list, ids: list[int] | None = None) -> list[bool]:
    """``(T,)`` True on the tokens of every assistant turn of ``messages`` (see the module).

    Args:
        tokenizer: A tokenizer with a chat template (no ``{% generation %}`` markers needed).
        messages: The conversation, ``[{"role", "content"}, ...]``.
        ids: Its ``T`` tokens, ``chat_ids(tokenizer, messages)``; computed when ``None``.

    Returns:
        One flag per token of ``ids``.
    """
    ids = chat_ids(tokenizer, messages) if ids is None else ids
    mask = [False] * len(ids)
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            continue
        # A conversation opening with the assistant has no prefix to render: its turn starts
        # at the first token (including any default system turn the template adds).
        start = _boundary(tokenizer, messages[:i], ids, True) if i else 0
        end = _boundary(tokenizer, messages[: i + 1], ids, False)
        mask[start:end] = [True] * max(end - start, 0)
    return mask

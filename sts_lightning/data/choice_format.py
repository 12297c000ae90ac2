"""A choice item as token sequences: one per option, in plain text or chat format.

Listed items (MMLU) read, in both formats::

    <question>

    A. <option A>
    B. <option B>
    C. <option C>
    D. <option D>
    Answer:

followed by the option's letter (``" B"`` in plain text, ``"B"`` as the assistant's reply in
chat); text items (code) are the question followed by the option's text. ``plain`` is the item
as a user without a chat template sees it (BOS, then the text); ``chat`` is the same content as
a user turn and an assistant reply through the tokenizer's chat template (SmolLM2 injects its
default system prompt). Template and system-prompt tokens are in the sequence but never content:
:attr:`EncodedChoice.content_spans` covers the question and the answer only.

Every option's sequence has the same tokens before its answer (checked), so options are compared
after the very same context. A sequence longer than ``max_length`` is cut from the LEFT, right
after its first token (the attention sink stays): the answer and the end of the question are
kept, the start of the question (or the template's system turn) goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sts_lightning.data.choices import LETTERS, ChoiceItem
from sts_lightning.data.prompts import Example, encode_example

__all__ = ["TEXT_FORMATS", "EncodedChoice", "encode_choice", "encode_choices", "render_choice"]

TEXT_FORMATS = ("plain", "chat")
"""How a domain's items are shown to the model."""

Span = tuple[int, int]


@dataclass
class EncodedChoice:
    """The token sequences of one choice item. Spans are half-open ``[start, end)``."""

    sequences: list[list[int]]
    """One per option: the shared context, then that option's answer tokens (nothing after)."""
    answer_spans: list[Span]
    """The answer tokens of each option in its sequence (all start at the same position)."""
    content_spans: list[Span]
    """The correct option's sequence: the question's and the answer's tokens (template tokens
    between or before them excluded; a token straddling both is in both)."""
    correct: int
    """Index of the correct option."""
    cut: int = 0
    """Tokens removed from the left (after the first token) to fit ``max_length``."""

    @property
    def single_token(self) -> bool:
        """Every option is one token after the same context: one forward scores them all."""
        return all(end - start == 1 for start, end in self.answer_spans)


def render_choice(item: ChoiceItem) -> tuple[str, list[str], str]:
    """``(prompt, answers, separator)``: the item's text, each option's answer text, and what
    joins them in plain text.

    Example:
        >>> item = ChoiceItem("2 + 2 =", ("3", "4"), 1)
        >>> render_choice(item)
        ('2 + 2 =\\n\\nA. 3\\nB. 4\\nAnswer:', ['A', 'B'], ' ')
    """
    if not item.listed:
        return item.question, list(item.options), ""
    listing = "\n".join(f"{LETTERS[k]}. {o}" for k, o in enumerate(item.options))
    prompt = f"{item.question}\n\n{listing}\nAnswer:"
    return prompt, list(LETTERS[: len(item.options)]), " "


def _left_cut(spans: list[Span], cut: int) -> list[Span]:
    """Spans after removing tokens ``1 .. cut`` (position 0 stays); emptied spans dropped."""
    moved = [(max(a - cut, 1), b - cut) for a, b in spans]
    return [(a, b) for a, b in moved if b > a]


def encode_choice(
    tokenizer,
    item: ChoiceItem,
    *,
    text_format: Literal["plain", "chat"] = "plain",
    max_length: int | None = None,
) -> EncodedChoice:
    """Tokenize every option of ``item`` after its question, in ``text_format``.

    Args:
        tokenizer: A fast Hugging Face tokenizer (with a chat template for ``"chat"``).
        item: The choice item.
        text_format: ``"plain"`` (BOS then the text) or ``"chat"`` (user turn, assistant reply).
        max_length: Longer sequences are cut from the left, keeping the first token and the
            answer; ``None``: no limit.

    Returns:
        The :class:`EncodedChoice`.

    Raises:
        ValueError: For an unknown ``text_format``, a ``max_length`` that cannot hold the
            answers after at least one context token, or a tokenizer that tokenizes the
            context differently for different options.
    """
    if text_format not in TEXT_FORMATS:
        raise ValueError(f"`text_format` must be one of {TEXT_FORMATS}, got {text_format!r}")
    prompt, answers, separator = render_choice(item)
    chat = text_format == "chat"
    encoded = [
        encode_example(tokenizer, Example(prompt, a), use_chat_template=chat, separator=separator)
        for a in answers
    ]
    sequences = [e.input_ids[: e.answer_span[1]] for e in encoded]  # the rest never matters
    spans = [e.answer_span for e in encoded]
    start = spans[0][0]
    context = sequences[0][:start]
    if any(s != start or seq[:s] != context for seq, (s, _) in zip(sequences, spans, strict=True)):
        raise ValueError(
            "`tokenizer` tokenizes the question differently before different options; "
            f"they would not be scored after the same context: {prompt[-60:]!r}"
        )
    right = encoded[item.correct]
    content = [right.query_span, right.answer_span]
    cut = 0
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"`max_length` must be an int >= 2 or None, got {max_length!r}")
        cut = max(0, max(len(s) for s in sequences) - max_length)
        if cut and start - cut < 2:  # the first token and one context token must remain
            raise ValueError(
                f"`max_length`={max_length} cannot hold an answer of "
                f"{max(b - a for a, b in spans)} tokens after some context; raise it"
            )
    if cut:
        sequences = [s[:1] + s[1 + cut :] for s in sequences]
        spans, content = _left_cut(spans, cut), _left_cut(content, cut)
    return EncodedChoice(sequences, spans, content, item.correct, cut)


def encode_choices(tokenizer, items: Sequence[ChoiceItem], **kwargs) -> list[EncodedChoice]:
    """:func:`encode_choice` of every item (``text_format``, ``max_length`` passed on)."""
    return [encode_choice(tokenizer, item, **kwargs) for item in items]

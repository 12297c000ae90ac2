"""Chat-templated base and ICL prompts, and the token spans that align them.

STS compares the SAE latents of the *same tokens* with and without in-context demonstrations.
For an example (prompt x, answer y) the base sequence is the conversation ``[user: x,
assistant: y]`` and the ICL sequence is ``[user: x_0, assistant: y_0, …, user: x, assistant: y]``
(teacher-forced: the answer is given, never sampled). ``EncodedPrompt.span`` says where the query
lies in each sequence, so the caller can compare the latents of identical token ids.

How the spans are found: the conversation is rendered by the chat template twice, once with
every message content replaced by a sentinel, which gives the character bounds of each content.
The real text is tokenized in one piece, exactly as ``apply_chat_template(..., tokenize=True)``
does, and a span is the tokens whose offsets overlap the content (a token straddling the boundary,
such as ``"\\n\\n"`` from the header's newline and a content's leading one, belongs to it). Chat
templates open each turn with a special token, and tokenizers split on special tokens before
anything else, so the query's tokens do not depend on the turns before it; :func:`build_pairs`
asserts that base and ICL span ids are identical and raises for a template where they are not.
Raw text has no such token, so it is cut at the query and the two parts are tokenized
separately (no merge across the cut; the one place the tokenization may be non-canonical).

The query is never at position 0: the first position is an attention sink with massive
activations in most LMs, so a query token there in the base sequence but not in the ICL one
would produce a spurious shift that dominates Δ. The template's own prefix (system turn,
``<|im_start|>user\\n``) precedes it; raw text (``use_chat_template=False``) starts with BOS.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["EncodedPrompt", "Example", "build_pairs", "encode_example"]

# Private-use code points: cannot collide with real text, and survive Jinja filters like `trim`.
_SENTINEL = "\ue000{}\ue001"


@dataclass(frozen=True)
class Example:
    """One training pair or domain text. Frozen, so equal examples hash alike."""

    prompt: str
    """The user turn (or the whole text of a plain-text domain)."""
    answer: str | None = None
    """The assistant answer, teacher-forced; ``None`` for a plain text (a single user turn)."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"`prompt` must be a non-empty string, got {self.prompt!r}")
        if self.answer is not None and not (isinstance(self.answer, str) and self.answer.strip()):
            raise ValueError(f"`answer` must be a non-empty string or None, got {self.answer!r}")


@dataclass
class EncodedPrompt:
    """A token sequence and the spans of its query. Spans are half-open ``[start, end)``."""

    input_ids: list[int]
    """The full sequence: template, demonstrations, query, answer."""
    query_span: tuple[int, int]
    """Tokens of the query's prompt content (no role header, no end-of-turn token)."""
    answer_span: tuple[int, int] | None = None
    """Tokens of the answer content, or ``None`` when the example has no answer."""
    demo_indices: tuple[int, ...] = ()
    """Indices into the demonstration pool, in prompt order (set by :func:`build_pairs`)."""

    def span(self, tokens: Literal["prompt", "answer", "all"] = "all") -> tuple[int, int]:
        """The ``[start, end)`` span of the query tokens selected by ``tokens``.

        Args:
            tokens: ``"prompt"``: the prompt content; ``"answer"``: the answer content;
                ``"all"``: prompt start to answer end, including the template tokens between
                them (end-of-turn, assistant header), which are identical in base and ICL too.

        Example:
            >>> EncodedPrompt([5, 6, 7, 8, 9], query_span=(1, 2), answer_span=(3, 5)).span("all")
            (1, 5)
        """
        if tokens == "prompt":
            return self.query_span
        if tokens not in ("answer", "all"):
            raise ValueError(f"`tokens` must be 'prompt', 'answer' or 'all', got {tokens!r}")
        if self.answer_span is None:
            if tokens == "answer":
                raise ValueError("`tokens`='answer' needs an example with an answer")
            return self.query_span
        return self.answer_span if tokens == "answer" else (self.query_span[0], self.answer_span[1])


def _chat_pieces(tokenizer, turns: list[tuple[str, str]], system_prompt: str | None) -> list[str]:
    """Render ``(role, content)`` turns and cut them into [template, content, …, template]."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "`tokenizer` has no chat template: pass use_chat_template=False for raw text, "
            "or set `tokenizer.chat_template`"
        )
    head = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]

    def render(texts: list[str]) -> str:
        messages = [{"role": role, "content": c} for (role, _), c in zip(turns, texts, strict=True)]
        return tokenizer.apply_chat_template(head + messages, tokenize=False)

    rest, pieces = render([_SENTINEL.format(i) for i in range(len(turns))]), []
    for i, (_, content) in enumerate(turns):
        before, found, rest = rest.partition(_SENTINEL.format(i))
        if not found or "\ue000" in before:
            raise ValueError("`tokenizer.chat_template` drops, repeats or reorders messages")
        pieces += [before, content]
    if "\ue000" in rest:
        raise ValueError("`tokenizer.chat_template` drops, repeats or reorders messages")
    pieces.append(rest)
    real = render([content for _, content in turns])
    if "".join(pieces) != real:
        # Templates such as Llama-3's `| trim` the contents; accept that one rewrite, no other.
        pieces = [p.strip() if i % 2 else p for i, p in enumerate(pieces)]
        if "".join(pieces) != real:
            raise ValueError("`tokenizer.chat_template` rewrites message contents; cannot align")
    return pieces


def _token_span(offsets: list[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int]:
    """The tokens overlapping ``chars``, including one straddling a boundary (``"\\n\\n"``)."""
    inside = [k for k, (a, b) in enumerate(offsets) if a < chars[1] and b > chars[0]]
    if not inside:
        raise ValueError(f"`tokenizer` offsets cover no token of characters {chars}")
    return inside[0], inside[-1] + 1


def _prefix_id(tokenizer) -> int:
    token_id = tokenizer.bos_token_id
    token_id = tokenizer.eos_token_id if token_id is None else token_id
    if token_id is None:
        raise ValueError("`tokenizer` needs a BOS or EOS token to start the sequence with")
    return token_id


def encode_example(
    tokenizer,
    example: Example,
    demonstrations: Sequence[Example] = (),
    *,
    system_prompt: str | None = None,
    use_chat_template: bool = True,
    separator: str = "\n\n",
    max_length: int | None = None,
) -> EncodedPrompt:
    """Tokenize ``demonstrations`` then ``example`` as one conversation, with the query's spans.

    Args:
        tokenizer: A Hugging Face tokenizer (with a chat template unless ``use_chat_template``
            is False).
        example: The query.
        demonstrations: Examples placed before the query, as user/assistant turns (a
            demonstration without answer is a lone user turn; some templates reject that).
        system_prompt: ``None``: whatever the template does (SmolLM2 injects a default system
            turn); a string: an explicit system message (raw text: prepended with ``separator``).
        use_chat_template: False for raw text: contents joined by ``separator`` after BOS.
        separator: Raw-text separator between contents; unused with a chat template.
        max_length: Raise if the sequence is longer (demonstrations are never truncated).

    Returns:
        The :class:`EncodedPrompt`.

    Example:
        >>> class Chars:  # a toy fast tokenizer: one id per character, BOS = 0
        ...     bos_token_id, eos_token_id, is_fast = 0, None, True
        ...     def __call__(self, text, add_special_tokens, return_offsets_mapping):
        ...         spans = [(k, k + 1) for k in range(len(text))]
        ...         return {"input_ids": [ord(c) for c in text], "offset_mapping": spans}
        >>> enc = encode_example(Chars(), Example("2+2", "4"), use_chat_template=False)
        >>> enc.input_ids, enc.span("prompt"), enc.span("answer")
        ([0, 50, 43, 50, 10, 10, 52], (1, 4), (6, 7))
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "`tokenizer` must be a fast tokenizer: spans need `return_offsets_mapping`"
        )
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TypeError(f"`system_prompt` must be a string or None, got {type(system_prompt)}")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2
    ):
        raise ValueError(f"`max_length` must be an int >= 2 or None, got {max_length!r}")
    turns = []  # (role, content); a text without answer is a lone user turn
    for item in (*demonstrations, example):
        if not isinstance(item, Example):
            raise TypeError(f"`example` and `demonstrations` must be Example, got {type(item)}")
        turns.append(("user", item.prompt))
        turns += [] if item.answer is None else [("assistant", item.answer)]
    if use_chat_template:
        pieces = _chat_pieces(tokenizer, turns, system_prompt)
    else:
        head = "" if system_prompt is None else system_prompt + separator
        pieces = [head] + [p for _, c in turns for p in (c, separator)]
        pieces[-1] = ""
    # Character bounds of every content (piece 2k + 1), then of the query and its answer.
    ends = [0]
    for piece in pieces:
        ends.append(ends[-1] + len(piece))
    chars = [(ends[k], ends[k + 1]) for k in range(1, len(pieces), 2)]
    query, answer = chars[-2:] if example.answer is not None else (chars[-1], None)
    text = "".join(pieces)
    # Raw text has no special token to shield the query from the text before it: cut there.
    cut = 0 if use_chat_template else query[0]
    ids, offsets = [], []
    for start, chunk in ((0, text[:cut]), (cut, text[cut:])):
        if chunk:
            enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
            ids += list(enc["input_ids"])
            offsets += [(start + a, start + b) for a, b in enc["offset_mapping"]]
    if not use_chat_template or offsets[0][1] > query[0]:
        ids, offsets = [_prefix_id(tokenizer), *ids], [(0, 0), *offsets]
    if max_length is not None and len(ids) > max_length:
        raise ValueError(
            f"`max_length`={max_length} is exceeded: the prompt has {len(ids)} tokens "
            f"with {len(demonstrations)} demonstrations; raise it or use fewer demonstrations"
        )
    query_span = _token_span(offsets, query)
    answer_span = None if answer is None else _token_span(offsets, answer)
    return EncodedPrompt(ids, query_span=query_span, answer_span=answer_span)


def build_pairs(
    tokenizer,
    examples: Sequence[Example],
    n_demos: int,
    *,
    seed: int = 0,
    demo_pool: Sequence[Example] | None = None,
    **encode_kwargs,
) -> list[tuple[EncodedPrompt, EncodedPrompt]]:
    """Encode each example without and with ``n_demos`` seeded demonstrations.

    Demonstrations are drawn without replacement from ``demo_pool`` (default: ``examples``),
    excluding the query itself and any example equal to it (a duplicate would leak the answer).
    Each example has its own random stream seeded by ``(seed, its index in examples)``, so its
    draw is reproducible and does not depend on the draws of the other examples.

    Args:
        tokenizer: A Hugging Face tokenizer.
        examples: The queries.
        n_demos: Demonstrations per ICL prompt; 0 makes the ICL prompt equal to the base one.
        seed: Seed of the demonstration choice.
        demo_pool: Where demonstrations come from; ``None``: from ``examples``.
        **encode_kwargs: ``system_prompt``, ``use_chat_template``, ``separator``, ``max_length``
            of :func:`encode_example`.

    Returns:
        ``(base, icl)`` pairs whose ``span(...)`` token ids are identical.

    Raises:
        ValueError: If ``n_demos`` is negative or larger than the distinct demonstrations
            available, or if a template renders the query differently after demonstrations.
    """
    examples, pool = list(examples), list(examples if demo_pool is None else demo_pool)
    available = len(pool) - (demo_pool is None)
    if isinstance(n_demos, bool) or not isinstance(n_demos, int) or not 0 <= n_demos <= available:
        raise ValueError(f"`n_demos` must be an int in [0, {available}], got {n_demos!r}")
    where: dict[Example, list[int]] = {}
    for j, demo in enumerate(pool):
        where.setdefault(demo, []).append(j)
    pairs = []
    for i, example in enumerate(examples):
        base = encode_example(tokenizer, example, **encode_kwargs)
        if n_demos == 0:
            pairs.append((base, replace(base, input_ids=list(base.input_ids))))
            continue
        excluded = set(where.get(example, ()))
        if len(pool) - len(excluded) < n_demos:
            raise ValueError(
                f"`n_demos`={n_demos} exceeds the {len(pool) - len(excluded)} demonstrations "
                f"distinct from example {i}"
            )
        # Drawing n + |excluded| then filtering keeps a uniform ordered sample of the rest.
        rng = random.Random(f"sts-demos/{seed}/{i}")
        drawn = rng.sample(range(len(pool)), n_demos + len(excluded))
        chosen = tuple(j for j in drawn if j not in excluded)[:n_demos]
        icl = encode_example(tokenizer, example, [pool[j] for j in chosen], **encode_kwargs)
        icl.demo_indices = chosen
        parts = ("prompt",) if example.answer is None else ("prompt", "answer", "all")
        for part in parts:
            (bs, be), (is_, ie) = base.span(part), icl.span(part)
            if base.input_ids[bs:be] != icl.input_ids[is_:ie]:
                raise ValueError(
                    f"`tokenizer` renders example {i}'s {part} tokens differently after "
                    "demonstrations; the base and ICL latents would not be the same tokens"
                )
        pairs.append((base, icl))
    return pairs

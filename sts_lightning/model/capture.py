"""Capture the residual stream after one decoder layer of a Hugging Face causal LM.

STS reads SAE latents of ``blocks.L.hook_resid_post``: the output of decoder layer ``L``, which
in HF transformers is ``hidden_states[L + 1]`` of ``output_hidden_states=True`` for every layer
but the last (HF applies the final norm there). Read top to bottom:

1. ``decoder_layers``: where a model family keeps its decoder blocks.
2. ``residual_stream``: one batched forward that *stops* after layer ``L``, through a forward
   hook registered in a context manager and removed in ``finally``. The layers above ``L`` and
   the LM head never run (about 3× faster at the middle layer of a 30-layer model).
3. ``iter_span_activations``: token-id sequences with one ``(start, end)`` span each → padded
   batches → float32 rows of the span positions, in the callers' order, so base and ICL rows of
   the same tokens can be paired row by row.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "count_rows",
    "decoder_layers",
    "iter_span_activations",
    "model_width",
    "residual_stream",
]

# Attribute paths to the decoder blocks, by family: Llama/Qwen2/Gemma2/Mistral, GPT-2, GPT-NeoX.
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, unwrapping a PEFT ``PeftModel`` first.

    Args:
        model: A ``*ForCausalLM`` of a supported family, or a PEFT model wrapping one.

    Returns:
        The ``nn.ModuleList`` of decoder layers (``n_layers`` blocks).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module (a causal LM), got {type(model)}")
    # Duck-typed so peft stays an optional import; LoRA layers are injected in place, so hooks
    # on the base model's blocks see the adapted forward.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in _LAYER_PATHS:
        layers = base
        for name in path.split("."):
            layers = getattr(layers, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(
        f"`model` ({type(base).__name__}) has no decoder layers at any of {_LAYER_PATHS}; "
        "expected a Llama/Qwen2/Gemma2/Mistral, GPT-2 or GPT-NeoX causal LM"
    )


def model_width(model: nn.Module) -> int:
    """The residual-stream width ``d_model`` of a causal LM (from its input embedding)."""
    return model.get_input_embeddings().weight.shape[1]


class _StopForward(Exception):
    """Raised by the capture hook once layer L has run: nothing above it is needed."""


@contextmanager
def _stop_after(block: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Hook ``block`` to store its output in the yielded dict and abort the forward."""
    captured: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
        # Decoder layers return a tensor in transformers 5 and a tuple (hidden, ...) before.
        captured["hidden"] = output[0] if isinstance(output, (tuple, list)) else output
        raise _StopForward

    handle = block.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch off dropout for the capture, then restore every submodule's own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def residual_stream(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    layer: int,
) -> Tensor:
    """The residual stream after decoder layer ``layer``, without running the layers above it.

    Runs under ``torch.no_grad`` (not ``inference_mode``: lazily cached buffers created in
    inference mode would break a later training step) and in eval mode (no dropout); both the
    hook and every submodule's train/eval mode are restored, even when the forward raises.
    Position ids are derived from ``attention_mask``, so left padding gives the same rows as
    right padding (HF models number positions 0..T-1 regardless of the mask).

    Args:
        model: A causal LM accepted by :func:`decoder_layers`; run in its own dtype.
        input_ids: Token ids ``(batch, seq)``, a LongTensor.
        attention_mask: ``(batch, seq)`` with 1 for real tokens and 0 for padding, or ``None``.
        layer: 0-based decoder layer index in ``[0, n_layers)``.

    Returns:
        ``(batch, seq, d_model)`` in the model's dtype, on its device; padding rows are garbage.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> lm = GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=2, n_head=2, vocab_size=16))
        >>> residual_stream(lm, torch.tensor([[1, 2, 3]]), layer=0).shape
        torch.Size([1, 3, 8])
    """
    layers = decoder_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"`layer` must be an int in [0, {len(layers)}), got {layer!r}")
    if not 0 <= layer < len(layers):
        raise ValueError(f"`layer` must be in [0, {len(layers)}) for this model, got {layer}")
    if not isinstance(input_ids, Tensor) or input_ids.dtype != torch.long:
        raise TypeError(f"`input_ids` must be a LongTensor (batch, seq), got {input_ids!r:.80}")
    if input_ids.ndim != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"`input_ids` must have a non-empty shape (batch, seq), got {tuple(input_ids.shape)}"
        )
    position_ids = None
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or attention_mask.is_floating_point():
            raise TypeError("`attention_mask` must be an integer or bool tensor (batch, seq)")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        attention_mask = attention_mask.long()
        # Count real tokens only: the first real token is position 0 whatever the padding side.
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)

    device = _input_device(model)
    kwargs = {"input_ids": input_ids.to(device), "use_cache": False}
    if attention_mask is not None:
        kwargs.update(
            attention_mask=attention_mask.to(device), position_ids=position_ids.to(device)
        )
    # The stop hook's exception is swallowed innermost; the other contexts exit normally.
    with (
        _stop_after(layers[layer]) as captured,
        _eval_mode(model),
        torch.no_grad(),
        suppress(_StopForward),
    ):
        model(**kwargs)
    if "hidden" not in captured:
        raise RuntimeError(f"decoder layer {layer} did not run during the forward of `model`")
    return captured["hidden"]


def _check_spans(sequences: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]]) -> None:
    if len(spans) != len(sequences):
        raise ValueError(
            f"`spans` must hold one (start, end) per sequence: got {len(spans)} spans for "
            f"{len(sequences)} `sequences`"
        )
    for i, (seq, (start, end)) in enumerate(zip(sequences, spans, strict=True)):
        if len(seq) == 0:
            raise ValueError(f"`sequences[{i}]` is empty; expected at least one token id")
        if not 0 <= start <= end <= len(seq):
            raise ValueError(
                f"`spans[{i}]` = ({start}, {end}) must satisfy 0 <= start <= end <= "
                f"len(sequences[{i}]) = {len(seq)}"
            )


def count_rows(
    sequences: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    exclude_token_ids: Collection[int] = (),
) -> int:
    """Number of rows :func:`iter_span_activations` yields in total for these arguments.

    Example:
        >>> count_rows([[5, 1, 6, 7], [8, 9]], [(1, 4), (0, 2)], exclude_token_ids={1})
        4
    """
    _check_spans(sequences, spans)
    excluded = set(exclude_token_ids)
    return sum(
        sum(t not in excluded for t in seq[start:end])
        for seq, (start, end) in zip(sequences, spans, strict=True)
    )


def iter_span_activations(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    spans: Sequence[tuple[int, int]],
    *,
    layer: int,
    batch_size: int = 8,
    pad_token_id: int,
    padding_side: str = "right",
    exclude_token_ids: Collection[int] = (),
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[Tensor]:
    """Residual-stream rows of one span per sequence, batch by batch, in the callers' order.

    Concatenating the yielded batches gives the rows of ``sequences[0]``'s span, then
    ``sequences[1]``'s, …, each in position order: two calls over the same tokens in different
    prompts (base vs ICL) therefore pair row by row. Sequences are cut at their span's end
    before the forward (a causal LM's later tokens cannot change earlier positions).

    Args:
        model: A causal LM accepted by :func:`decoder_layers`.
        sequences: Token ids, one list per sequence.
        spans: One ``(start, end)`` per sequence: positions ``start <= p < end`` are kept.
        layer: 0-based decoder layer index.
        batch_size: Sequences per forward.
        pad_token_id: Id used to fill padding (masked out, so any valid id works).
        padding_side: ``"right"`` or ``"left"``; both give the same rows.
        exclude_token_ids: Token ids whose positions are dropped (e.g. BOS, chat markers).
        progress: Show a tqdm progress bar over sequences.
        desc: Label of the progress bar.

    Yields:
        float32 ``(n_rows, d_model)`` per batch, on the model's device (``n_rows`` may be 0).
    """
    _check_spans(sequences, spans)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"`padding_side` must be 'left' or 'right', got {padding_side!r}")
    excluded = torch.tensor(sorted(set(exclude_token_ids)), dtype=torch.long)

    with tqdm(total=len(sequences), desc=desc, unit="seq", disable=not progress) as bar:
        for first in range(0, len(sequences), batch_size):
            # Keep at least one token so a sequence with an empty span at 0 still has a row.
            batch = [
                (list(seq[: max(end, 1)]), start, end)
                for seq, (start, end) in zip(
                    sequences[first : first + batch_size],
                    spans[first : first + batch_size],
                    strict=True,
                )
            ]
            width = max(len(seq) for seq, _, _ in batch)
            input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            keep = torch.zeros_like(input_ids, dtype=torch.bool)
            for i, (seq, start, end) in enumerate(batch):
                offset = width - len(seq) if padding_side == "left" else 0
                input_ids[i, offset : offset + len(seq)] = torch.tensor(seq, dtype=torch.long)
                attention_mask[i, offset : offset + len(seq)] = 1
                keep[i, offset + start : offset + end] = True
            keep &= ~torch.isin(input_ids, excluded)

            hidden = residual_stream(model, input_ids, attention_mask, layer=layer)
            # Boolean indexing is row-major: sequence order, then position order.
            yield hidden[keep.to(hidden.device)].float()  # (n_rows, d_model)
            bar.update(len(batch))

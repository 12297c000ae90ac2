"""Rebuild a plain HF checkpoint of SmolLM2-135M-Instruct from its GGUF file.

transformers can load a GGUF file (dequantized to float32), but the model then keeps a GGUF
``quantization_config``: ``save_pretrained`` refuses it and trainers treat it as quantized.
:func:`rebuild_smollm2` writes a checkpoint without it (safetensors, fp32, ~540 MB):

1. load the GGUF model and tokenizer (``gguf_file=...``) and give the tokenizer a ChatML template
   and a pad token distinct from EOS;
2. rebuild the config without ``quantization_config``, ``from_config``, copy the state dict and
   re-tie the LM head to the embedding (the only key allowed to be missing or unexpected);
3. check the rebuilt model reproduces the GGUF model's logits on a fixed sentence;
4. save model + tokenizer.

Where the result is cached, and when it is rebuilt, is :mod:`sts_lightning.model.embedded`'s job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["rebuild_smollm2"]

# Not the official SmolLM2 pad (`<|im_end|>` = EOS): a pad equal to EOS lets collators that mask
# pad labels also mask the end of every answer, and `padding_idx` freezes that embedding row.
_PAD_TOKEN = "<|endoftext|>"
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."
_CHECK_ATOL = 1e-4
# The GGUF quantization_config is what makes save_pretrained and trainers balk; the rest are
# load-time annotations (paths, GGUF metadata) that from_config would carry around as noise.
_DROPPED_CONFIG_KEYS = (
    "quantization_config",
    "_name_or_path",
    "_model_name_or_path",
    "transformers_version",
    "architectures",
    "dtype",
)


def _fix_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the GGUF tokenizer a chat template and a pad token distinct from EOS, in place."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = _CHATML_TEMPLATE
    if _PAD_TOKEN not in tokenizer.get_vocab():
        raise RuntimeError(f"the GGUF tokenizer has no {_PAD_TOKEN!r} token to pad with")
    tokenizer.pad_token = _PAD_TOKEN


def _plain_copy(
    gguf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str
) -> tuple[PreTrainedModel, list[str], list[str]]:
    """The GGUF model's weights in a model built from its config minus ``quantization_config``.

    Returns:
        ``(model, missing, unexpected)``: the fp32 model in eval mode, its LM head tied to its
        input embedding, and the state-dict keys ``load_state_dict`` reported.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = gguf.config.to_dict()
    for key in _DROPPED_CONFIG_KEYS:
        cfg.pop(key, None)
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    config.pad_token_id = tokenizer.pad_token_id
    # The GGUF tokenizer reports no length limit (1e30); truncation should stop at the context.
    tokenizer.model_max_length = config.max_position_embeddings
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(gguf.state_dict(), strict=False)
    model.tie_weights()
    # Tied embeddings: lm_head.weight may be absent from (or extra in) the GGUF state dict.
    tied = {"lm_head.weight"}
    if set(missing) - tied or set(unexpected) - tied:
        raise RuntimeError(
            f"rebuilding {name} left keys missing {missing} / unexpected {unexpected}"
        )
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise RuntimeError("the rebuilt model's LM head is not tied to its input embedding")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, list(missing), list(unexpected)


def _logits_diff(
    model: PreTrainedModel, gguf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> float:
    """Largest absolute logit difference on a fixed sentence; raises above the tolerance."""
    import torch

    with torch.inference_mode():
        ids = tokenizer(_CHECK_TEXT, return_tensors="pt").input_ids  # (1, n_tokens)
        diff = (model(ids).logits - gguf(ids).logits).abs().max().item()
    if not diff <= _CHECK_ATOL:
        raise RuntimeError(
            f"the rebuilt model's logits differ from the GGUF model's by {diff:.3g} "
            f"(> {_CHECK_ATOL}); refusing to cache it"
        )
    return diff


def rebuild_smollm2(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Rebuild a plain fp32 HF checkpoint from the GGUF file into ``out_dir``.

    Args:
        gguf_path: The ``.gguf`` file.
        out_dir: An existing, empty directory to save model and tokenizer into.

    Returns:
        Facts about the build for the cache's marker file (logits check, key check, timings).

    Raises:
        RuntimeError: the tokenizer has no pad token to use, the state dict does not fit, or the
            rebuilt model does not reproduce the GGUF model's logits.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    gguf = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    t_load = time.perf_counter() - t0

    _fix_tokenizer(tokenizer)
    model, missing, unexpected = _plain_copy(gguf, tokenizer, gguf_path.name)
    diff = _logits_diff(model, gguf, tokenizer)
    del gguf

    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {
        "logits_max_abs_diff": diff,
        "missing_keys": missing,
        "unexpected_keys": unexpected,
        "gguf_load_seconds": round(t_load, 2),
    }

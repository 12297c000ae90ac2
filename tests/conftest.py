"""Shared fixtures: a tiny offline tokenizer with a ChatML template and tiny random HF models."""

from __future__ import annotations

import os

# Offline by construction: a stray hub look-up must fail fast, and W&B must never go online.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

# SmolLM2's template (ChatML with a default system prompt), so tests see the same structure.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What is 12 + 7? The answer is 19.",
    "Solve 3 * 4 - 5. The answer is 7.",
    "The court held that the contract was void for lack of consideration.",
    "def add(a, b):\n    return a + b\n",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "You are a helpful assistant. user assistant system",
] * 20


def make_tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~300) with ChatML special tokens and a pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


def make_tiny_model(model_type: str, vocab_size: int, **overrides):
    """A tiny random causal LM (3 layers, width 32), seeded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if model_type == "gpt2":
        cfg = AutoConfig.for_model(
            "gpt2", n_embd=32, n_layer=3, n_head=2, n_positions=256, **common, **overrides
        )
    else:
        cfg = AutoConfig.for_model(
            model_type,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=256,
            **common,
            **overrides,
        )
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    return make_tiny_model("llama", len(tiny_tokenizer))


@pytest.fixture(scope="session", params=["llama", "qwen2", "gemma2", "gpt2"])
def tiny_model(request, tiny_tokenizer):
    """One tiny random causal LM per supported family (3 layers, width 32)."""
    return make_tiny_model(request.param, len(tiny_tokenizer))


def make_tiny_sae():
    """A random sae-lens StandardSAE on the residual stream after layer 1 of a width-32 model."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64))
    with torch.no_grad():  # a bias makes some latents fire on every token, as in real SAEs
        sae.b_enc.normal_(0.0, 0.5)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    return sae.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_sae():
    return make_tiny_sae()


@pytest.fixture
def one_thread():
    """One torch thread for the test (tiny models: fastest, and immune to a busy second core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""The rollout functions: prompt encoding, completion masking, padding-invariant log-probs."""

from __future__ import annotations

import pytest
import torch

from sts_lightning.training.logps import completion_logps
from sts_lightning.training.rollout import (
    encode_prompts,
    sample_completions,
    seeded_sampling,
    split_batch,
)


def test_encode_prompts_left_pads_chat_templated_prompts(tiny_tokenizer):
    ids, mask = encode_prompts(tiny_tokenizer, ["Hi", "What is 12 + 7?"])
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0, 0] == 0 and mask[1].all()  # the short prompt is padded on the left
    text = tiny_tokenizer.decode(ids[0][mask[0].bool()])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    custom, _ = encode_prompts(tiny_tokenizer, ["Hi"], system_prompt="Be brief.")
    assert "Be brief." in tiny_tokenizer.decode(custom[0])


def test_completions_are_cut_after_the_first_eos(tiny_tokenizer):
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id

    class Scripted(torch.nn.Module):  # `generate` returns fixed continuations
        generation_config = None

        def generate(self, input_ids, attention_mask, generation_config):
            tail = torch.tensor([[5, eos, 7, 8], [5, 6, 7, 8], [eos, 9, 9, 9]])
            return torch.cat([input_ids, tail], 1)

    prompt = torch.ones(3, 2, dtype=torch.long)
    ids, mask = sample_completions(Scripted(), tiny_tokenizer, prompt, prompt, max_new_tokens=4)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ids.tolist() == [[5, eos, pad, pad], [5, 6, 7, 8], [eos, pad, pad, pad]]


def test_completion_logps_do_not_depend_on_left_padding(tiny_model, tiny_tokenizer):
    # Position ids follow the mask, as in `generate`: a padded row scores like the bare row
    # (this matters for absolute position embeddings, e.g. GPT-2).
    ids, mask = encode_prompts(tiny_tokenizer, ["Hi", "What is 12 + 7? Think."])
    completion = torch.tensor([[40, 41, 42], [40, 41, 42]])
    full_ids = torch.cat([ids, completion], 1)
    full_mask = torch.cat([mask, torch.ones_like(completion)], 1)
    batched = completion_logps(tiny_model, full_ids, full_mask, 3, temperature=0.7)
    start = int((mask[0] == 0).sum())
    alone = completion_logps(
        tiny_model, full_ids[:1, start:], full_mask[:1, start:], 3, temperature=0.7
    )
    assert torch.allclose(batched[0], alone[0], atol=1e-5)
    # And they are the tempered log-softmax of the full logits.
    logits = tiny_model(full_ids[:1, start:]).logits[0, -4:-1] / 0.7
    expected = logits.log_softmax(-1).gather(-1, completion[0, :, None]).squeeze(-1)
    assert torch.allclose(alone[0], expected, atol=1e-5)
    # Micro-batching gives the same numbers.
    assert torch.allclose(
        completion_logps(tiny_model, full_ids, full_mask, 3, temperature=0.7, batch_size=1),
        batched,
        atol=1e-6,
    )


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    with seeded_sampling(7, torch.device("cpu")):
        a = torch.rand(3)
    with seeded_sampling(7, torch.device("cpu")):
        b = torch.rand(3)
    assert torch.equal(a, b) and torch.equal(torch.random.get_rng_state(), before)


def test_split_batch_accepts_lists_of_rows_and_rejects_promptless_batches():
    rows = [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
    assert split_batch(rows) == (["a", "b"], {"answer": ["1", "2"]})
    assert split_batch({"prompt": ["a"], "n": torch.tensor([3])}) == (["a"], {"n": [3]})
    with pytest.raises(ValueError, match="'prompt' key"):
        split_batch({"question": ["a"]})

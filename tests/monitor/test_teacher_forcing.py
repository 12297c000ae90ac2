"""Teacher-forced scoring against the model's own full forward (``output_hidden_states``)."""

from __future__ import annotations

import pytest
import torch

from sts_lightning.monitor.teacher_forcing import pad_batch, scoring_pass, target_logprobs


def _batch():
    ids, mask = pad_batch([[5, 17, 42, 9, 33], [8, 21, 3]], pad_token_id=0)
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[0, 2:5] = True
    targets[1, 1:3] = True
    return ids, mask, targets


def test_target_logprobs_equal_the_full_forward(tiny_model):
    ids, mask, targets = _batch()
    with scoring_pass(tiny_model):
        logp, logits = target_logprobs(tiny_model, ids, mask, targets)
        full = tiny_model(input_ids=ids, attention_mask=mask).logits.double().log_softmax(-1)
    # Oracle: token t's log-prob is read from position t - 1 of the full logits.
    expected = [full[b, t - 1, ids[b, t]] for b, t in targets.nonzero().tolist()]
    torch.testing.assert_close(logp, torch.stack(expected), rtol=1e-5, atol=1e-5)
    assert logits.shape == (int(targets.sum()), full.shape[-1])


def test_scoring_pass_collects_the_layer_and_restores_modes(tiny_llama):
    ids, mask, targets = _batch()
    tiny_llama.train()
    tiny_llama.model.layers[0].eval()  # a submodule's own mode must come back as it was
    with scoring_pass(tiny_llama, layer=1) as store:
        assert not tiny_llama.training and not torch.is_grad_enabled()
        target_logprobs(tiny_llama, ids, mask, targets)
        out = tiny_llama(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert tiny_llama.training and not tiny_llama.model.layers[0].training
    assert len(store) == 2  # one entry per forward
    real = mask.bool()
    torch.testing.assert_close(store[0][real], out.hidden_states[2][real])
    target_logprobs(tiny_llama, ids, mask, targets)
    assert len(store) == 2  # the hook is gone


def test_a_target_without_context_is_refused(tiny_llama):
    ids, mask, targets = _batch()
    targets[0, 0] = True
    with pytest.raises(ValueError, match="False at position 0"):
        target_logprobs(tiny_llama, ids, mask, targets)

"""Teacher-forced scoring against the model's own full forward (``output_hidden_states``)."""

from __future__ import annotations

import pytest
import torch

from sts_lightning.monitor.teacher_forcing import (
    pad_batch,
    scored_logits,
    scoring_pass,
    shared_prefix_length,
    target_logprobs,
)


def _batch():
    ids, mask = pad_batch([[5, 17, 42, 9, 33], [8, 21, 3]], pad_token_id=0)
    targets = torch.zeros_like(ids, dtype=torch.bool)
    targets[0, 2:5] = True
    targets[1, 1:3] = True
    return ids, mask, targets


def test_target_logprobs_equal_the_full_forward(tiny_model):
    ids, mask, targets = _batch()
    with scoring_pass(tiny_model):
        logp, logits, _ = target_logprobs(tiny_model, ids, mask, targets)
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


def _shared_batch():
    """Three rows that begin with the same 10 tokens, then differ (and differ in length)."""
    head = [5, 17, 42, 9, 33, 8, 21, 3, 11, 12]
    rows = [[*head, 40, 41, 42, 43], [*head, 50, 51], [*head, 60, 61, 62, 63, 64, 65]]
    ids, mask = pad_batch(rows, pad_token_id=0)
    targets = torch.zeros_like(ids, dtype=torch.bool)
    for b, row in enumerate(rows):
        targets[b, 11 : len(row)] = True  # the first scored token's predictor is position 10
    return rows, ids, mask, targets


def test_shared_prefix_length_stops_at_a_difference_a_pad_or_a_read():
    _, ids, mask, targets = _shared_batch()
    predictors = torch.nn.functional.pad(targets[:, 1:], (0, 1), value=False)
    assert shared_prefix_length(ids, mask, predictors) == 10
    ids2 = ids.clone()
    ids2[1, 9] = 99  # rows differ from position 9: too short a prefix to share
    assert shared_prefix_length(ids2, mask, predictors) == 9
    mask2 = mask.clone()
    mask2[2, 4] = 0  # a masked token inside the prefix
    assert shared_prefix_length(ids, mask2, predictors) == 0
    assert shared_prefix_length(ids, None, predictors) == 0  # packed rows
    assert shared_prefix_length(ids[:1], mask[:1], predictors[:1]) == 0  # one row


def test_a_shared_prefix_gives_each_rows_own_forward(tiny_model):
    rows, ids, mask, targets = _shared_batch()
    calls = []
    handle = tiny_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with scoring_pass(tiny_model):
            logp, logits, _ = target_logprobs(tiny_model, ids, mask, targets)
    finally:
        handle.remove()
    assert len(calls) == 2  # the prefix once, then the rest of every row
    expected = []
    for b, row in enumerate(rows):  # oracle: each row alone, whole
        with torch.no_grad():
            full = tiny_model(input_ids=torch.tensor([row])).logits[0].double().log_softmax(-1)
        expected += [full[t - 1, row[t]] for t in targets[b].nonzero()[:, 0].tolist()]
    torch.testing.assert_close(logp, torch.stack(expected), rtol=1e-5, atol=1e-5)
    assert logits.shape[0] == int(targets.sum())


def test_a_shared_prefix_returns_the_layer_rows_of_the_full_forward(tiny_llama):
    _rows, ids, mask, targets = _shared_batch()
    reads = targets.clone()
    reads[:, 10] = True  # a row read right after the prefix
    with scoring_pass(tiny_llama, layer=1) as store:
        _, _, got = target_logprobs(tiny_llama, ids, mask, targets, store, reads)
        out = tiny_llama(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(got, out.hidden_states[2][reads], rtol=1e-5, atol=1e-5)


def test_gradients_flow_through_a_shared_prefix(tiny_tokenizer):
    """Training on the shared prefix's cache: the same loss and gradient as each row alone."""
    from sts_lightning.training.sft import answer_nll
    from tests.conftest import make_tiny_model

    rows, ids, mask, targets = _shared_batch()
    labels = torch.where(targets, ids, torch.full_like(ids, -100))
    model = make_tiny_model("llama", len(tiny_tokenizer)).train()
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    nll, n = answer_nll(model, ids, mask, labels)
    handle.remove()
    assert len(calls) == 2  # shared: no dropout in this model
    nll.backward()
    shared = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    total = 0.0
    for b, row in enumerate(rows):  # oracle: one row per forward, nothing shared
        alone = torch.tensor([row])
        one, _ = answer_nll(model, alone, torch.ones_like(alone), labels[b : b + 1, : len(row)])
        one.backward()
        total += float(one.detach())
    assert float(nll) == pytest.approx(total, rel=1e-5) and int(n) == int(targets.sum())
    for name, p in model.named_parameters():
        torch.testing.assert_close(shared[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_no_prefix_is_shared_under_dropout_in_training(tiny_tokenizer):
    from tests.conftest import make_tiny_model

    _, ids, mask, targets = _shared_batch()
    model = make_tiny_model("llama", len(tiny_tokenizer), attention_dropout=0.5).train()
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    predictors = torch.nn.functional.pad(targets[:, 1:], (0, 1), value=False)
    scored_logits(model, ids, mask, predictors)
    assert len(calls) == 1  # one plain forward: a per-row dropout mask cannot be shared
    model.eval()
    scored_logits(model, ids, mask, predictors)
    assert len(calls) == 3

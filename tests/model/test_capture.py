"""Tests for sts_lightning.model.capture: the stopped forward against HF's own hidden states."""

from __future__ import annotations

import copy

import pytest
import torch

from sts_lightning.model.capture import (
    count_rows,
    decoder_layers,
    iter_span_activations,
    residual_stream,
)

N_LAYERS = 3  # the conftest models; every layer but the last equals hidden_states[L + 1]
INNER_LAYERS = range(N_LAYERS - 1)


def _ids(*lengths: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    # Ids >= 3 keep clear of pad/bos/eos (0, 1, 2) so exclusions below are deliberate.
    return [torch.randint(3, 200, (n,), generator=g).tolist() for n in lengths]


def _hidden(model, seq: list[int], layer: int) -> torch.Tensor:
    """HF reference: hidden_states[L + 1] of an unpadded single-sequence forward, (seq, d_model)."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([seq]), output_hidden_states=True, use_cache=False)
    return out.hidden_states[layer + 1][0]


def _pad(seqs: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, cols], mask[i, cols] = torch.tensor(s), 1
    return ids, mask


def _hooks(model) -> list[dict]:
    return [dict(block._forward_hooks) for block in decoder_layers(model)]


# --- decoder_layers ------------------------------------------------------------------------------


def test_decoder_layers_of_each_family(tiny_model):
    layers = decoder_layers(tiny_model)
    assert isinstance(layers, torch.nn.ModuleList)
    assert len(layers) == N_LAYERS


def test_gpt_neox_layers_match_hidden_states():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, vocab_size=300,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    assert decoder_layers(model) is model.gpt_neox.layers
    seq = _ids(6)[0]
    for layer in INNER_LAYERS:
        got = residual_stream(model, torch.tensor([seq]), layer=layer)[0]
        torch.testing.assert_close(got, _hidden(model, seq, layer), atol=1e-5, rtol=0)


def test_decoder_layers_rejects_models_without_layers():
    with pytest.raises(TypeError, match="`model`"):
        decoder_layers(object())
    with pytest.raises(ValueError, match=r"`model`.*no decoder layers"):
        decoder_layers(torch.nn.Linear(2, 2))


# --- residual_stream -----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", INNER_LAYERS)
def test_matches_hidden_states_without_padding(tiny_model, layer):
    seqs = _ids(7, 7)
    ids = torch.tensor(seqs)
    with torch.no_grad():
        ref = tiny_model(input_ids=ids, output_hidden_states=True).hidden_states[layer + 1]
    got = residual_stream(tiny_model, ids, layer=layer)
    assert got.shape == (2, 7, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("layer", INNER_LAYERS)
def test_padded_rows_match_unpadded_forward(tiny_model, layer, side):
    seqs = _ids(9, 4, 6)
    ids, mask = _pad(seqs, side)
    got = residual_stream(tiny_model, ids, mask, layer=layer)
    for i, seq in enumerate(seqs):
        real = got[i][mask[i].bool()]  # (len(seq), d_model)
        torch.testing.assert_close(real, _hidden(tiny_model, seq, layer), atol=1e-5, rtol=0)


def test_last_layer_is_before_the_final_norm(tiny_llama):
    seq = _ids(5)[0]
    got = residual_stream(tiny_llama, torch.tensor([seq]), layer=N_LAYERS - 1)[0]
    with torch.no_grad():
        ref = tiny_llama.model.norm(got)
    torch.testing.assert_close(ref, _hidden(tiny_llama, seq, N_LAYERS - 1), atol=1e-5, rtol=0)


def test_stops_after_the_requested_layer(tiny_model):
    layers = decoder_layers(tiny_model)
    calls = []
    handles = [
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
        for i, block in enumerate(layers)
    ]
    handles.append(tiny_model.get_output_embeddings().register_forward_hook(
        lambda *_: calls.append("lm_head")
    ))  # fmt: skip
    try:
        residual_stream(tiny_model, torch.tensor(_ids(5)), layer=0)
    finally:
        for h in handles:
            h.remove()
    # Hooks run in registration order, so layer 0's counter fires before the stop hook.
    assert calls == [0]


def test_hooks_removed_after_success(tiny_model):
    before = _hooks(tiny_model)
    residual_stream(tiny_model, torch.tensor(_ids(5)), layer=1)
    assert _hooks(tiny_model) == before


def test_hooks_removed_and_error_propagates_when_forward_raises(tiny_model, monkeypatch):
    before = _hooks(tiny_model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom in layer 0")

    monkeypatch.setattr(decoder_layers(tiny_model)[0], "forward", boom)
    with pytest.raises(RuntimeError, match="boom in layer 0"):
        residual_stream(tiny_model, torch.tensor(_ids(5)), layer=1)
    assert _hooks(tiny_model) == before


def test_eval_mode_for_capture_and_modes_restored(tiny_model):
    seq = torch.tensor(_ids(6))
    expected = residual_stream(tiny_model, seq, layer=1)
    modes = [m.training for m in tiny_model.modules()]
    tiny_model.train()
    decoder_layers(tiny_model)[0].eval()  # a mixed state must come back as it was
    mixed = [m.training for m in tiny_model.modules()]
    try:
        # GPT-2 has dropout 0.1: in train mode this would differ without the eval switch.
        torch.testing.assert_close(residual_stream(tiny_model, seq, layer=1), expected)
        assert [m.training for m in tiny_model.modules()] == mixed
    finally:
        for m, training in zip(tiny_model.modules(), modes, strict=True):
            m.training = training


def test_no_autograd_graph(tiny_llama):
    out = residual_stream(tiny_llama, torch.tensor(_ids(4)), layer=0)
    assert not out.requires_grad
    out.add_(1.0)  # a plain tensor (not an inference tensor): callers may modify it in place


def test_peft_wrapped_model(tiny_llama):
    from peft import LoraConfig, get_peft_model

    # get_peft_model injects LoRA modules in place: never touch the session-scoped fixture.
    peft_model = get_peft_model(
        copy.deepcopy(tiny_llama), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    ).eval()
    assert decoder_layers(peft_model) is peft_model.get_base_model().model.layers
    ids = torch.tensor(_ids(6, 6))
    # LoRA B starts at zero: the adapted model computes exactly the base model.
    base = residual_stream(tiny_llama, ids, layer=1)
    torch.testing.assert_close(residual_stream(peft_model, ids, layer=1), base)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p.data)
    # ... and a non-zero B is seen through the hook, so the adapter is really in the forward.
    assert not torch.allclose(residual_stream(peft_model, ids, layer=1), base)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(layer=3), ValueError, r"`layer` must be in \[0, 3\)"),
        (dict(layer=-1), ValueError, r"`layer` must be in \[0, 3\)"),
        (dict(layer=True), TypeError, "`layer`"),
        (dict(layer=1.0), TypeError, "`layer`"),
        (dict(input_ids=torch.tensor([3, 4, 5])), ValueError, "`input_ids`.*(batch, seq)"),
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError, "`input_ids`"),
        (dict(input_ids=torch.tensor([[3.0, 4.0]])), TypeError, "`input_ids`.*LongTensor"),
        (dict(input_ids=[[3, 4]]), TypeError, "`input_ids`"),
        (dict(attention_mask=torch.ones(1, 2, dtype=torch.long)), ValueError, "`attention_mask`"),
        (dict(attention_mask=torch.ones(1, 3)), TypeError, "`attention_mask`"),
    ],
)
def test_residual_stream_rejects_bad_input(tiny_llama, kwargs, error, match):
    args = dict(input_ids=torch.tensor([[3, 4, 5]]), attention_mask=None, layer=0) | kwargs
    with pytest.raises(error, match=match):
        residual_stream(tiny_llama, **args)


# --- iter_span_activations -----------------------------------------------------------------------

SEQS = _ids(8, 3, 11, 6, 5, seed=1)
SPANS = [(2, 6), (0, 3), (4, 11), (5, 5), (1, 4)]  # one empty span, one up to the end


def _expected_rows(model, layer: int, excluded: set[int]) -> torch.Tensor:
    rows = []
    for seq, (start, end) in zip(SEQS, SPANS, strict=True):
        hidden = _hidden(model, seq, layer)[start:end]
        keep = torch.tensor([t not in excluded for t in seq[start:end]], dtype=torch.bool)
        rows.append(hidden[keep])
    return torch.cat(rows).float()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_span_rows_match_hidden_states(tiny_model, batch_size, side):
    excluded = {SEQS[0][3], SEQS[2][4]}  # drops positions inside two spans (and any repeats)
    batches = list(
        iter_span_activations(
            tiny_model, SEQS, SPANS, layer=1, batch_size=batch_size, pad_token_id=0,
            padding_side=side, exclude_token_ids=excluded,
        )
    )  # fmt: skip
    assert len(batches) == -(-len(SEQS) // batch_size)
    assert all(b.dtype == torch.float32 and b.shape[1] == 32 for b in batches)
    got = torch.cat(batches)
    assert got.shape[0] == count_rows(SEQS, SPANS, excluded) < count_rows(SEQS, SPANS)
    torch.testing.assert_close(got, _expected_rows(tiny_model, 1, excluded), atol=1e-5, rtol=0)


def test_span_rows_with_progress_bar(tiny_llama, capsys):
    rows = iter_span_activations(
        tiny_llama, SEQS, SPANS, layer=0, pad_token_id=0, progress=True, desc="spans"
    )
    got = torch.cat(list(rows))
    torch.testing.assert_close(got, _expected_rows(tiny_llama, 0, set()), atol=1e-5, rtol=0)
    assert "spans" in capsys.readouterr().err


def test_count_rows():
    assert count_rows([[5, 1, 6, 7], [8, 9]], [(1, 4), (0, 2)]) == 5
    assert count_rows([[5, 1, 6, 7], [8, 9]], [(1, 4), (0, 2)], exclude_token_ids=[1, 9]) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(spans=SPANS[:-1]), "`spans` must hold one"),
        (dict(spans=[*SPANS[:-1], (2, 99)]), r"`spans\[4\]`"),
        (dict(spans=[*SPANS[:-1], (3, 2)]), r"`spans\[4\]`"),
        (dict(sequences=[*SEQS[:-1], []]), r"`sequences\[4\]` is empty"),
        (dict(batch_size=0), "`batch_size`"),
        (dict(padding_side="center"), "`padding_side`"),
        (dict(layer=3), "`layer`"),
    ],
)
def test_iter_span_activations_rejects_bad_input(tiny_llama, kwargs, match):
    args = dict(sequences=SEQS, spans=SPANS, layer=0, pad_token_id=0) | kwargs
    with pytest.raises(ValueError, match=match):
        list(iter_span_activations(tiny_llama, **args))


@pytest.mark.slow
def test_residual_stream_on_smollm2():
    from sts_lightning.model.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("embedded:smollm2")
    batch = tok(
        ["The capital of France is Paris.", "def add(a, b): return a + b"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].bool()
    for layer in (0, 6, 12, 28):
        got = residual_stream(model, batch["input_ids"], batch["attention_mask"], layer=layer)
        torch.testing.assert_close(got[mask], hidden[layer + 1][mask], atol=1e-5, rtol=1e-5)

"""The precision decision (bf16 autocast where native) and the bf16 path against fp32.

Tolerances, stated once: bf16 keeps 8 mantissa bits (relative rounding 2⁻⁸ ≈ 0.4 % per
product input); on the tiny model a sequence's summed log-probability and a training loss stay
within 3 % of fp32, and a choice margin (a difference of two such sums) within 0.05 nats + 3 %.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sts_lightning.model import precision as P
from sts_lightning.monitor.teacher_forcing import pad_batch, scoring_pass, target_logprobs

RTOL = 0.03


def test_auto_follows_the_chip(monkeypatch):
    monkeypatch.setattr(P, "native_bf16", lambda device="cpu": True)
    assert P.resolve_precision("auto", "cpu") == "bf16-mixed"
    monkeypatch.setattr(P, "native_bf16", lambda device="cpu": False)
    assert P.resolve_precision("auto", "cpu") == "32-true"
    # A forced setting is kept whatever the chip.
    assert P.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert P.resolve_precision("32-true", "cpu") == "32-true"


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert P.native_bf16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert P.native_bf16("cpu") is True
    assert P.native_bf16("meta") is False


def test_a_bad_precision_names_the_field():
    with pytest.raises(ValueError, match=r"`finetune\.precision` must be one of"):
        P.resolve_precision("fp8", "cpu", "finetune.precision")
    from sts_lightning.experiment.config import EvalConfig, FinetuneConfig

    with pytest.raises(ValueError, match=r"`finetune\.precision`"):
        FinetuneConfig(precision="16")
    with pytest.raises(ValueError, match=r"`evaluation\.precision`"):
        EvalConfig(precision="bf16")


def test_fp32_is_exactly_no_autocast(tiny_llama):
    ids, mask = pad_batch([[5, 17, 42, 9, 33], [8, 21, 3]], pad_token_id=0)
    targets = mask.bool().clone()
    targets[:, 0] = False
    with scoring_pass(tiny_llama):
        plain, _ = target_logprobs(tiny_llama, ids, mask, targets)
        with P.autocast("32-true", "cpu"):
            forced, _ = target_logprobs(tiny_llama, ids, mask, targets)
    assert torch.equal(plain, forced)


def test_bf16_scores_stay_within_tolerance_of_fp32(tiny_llama):
    torch.manual_seed(0)
    seqs = [torch.randint(3, 200, (n,)).tolist() for n in (12, 20, 7, 16)]
    ids, mask = pad_batch(seqs, pad_token_id=0)
    targets = mask.bool().clone()
    targets[:, 0] = False
    with scoring_pass(tiny_llama, layer=1) as store:
        fp32, _ = target_logprobs(tiny_llama, ids, mask, targets)
        rows32 = store[-1].clone()
        with P.autocast("bf16-mixed", "cpu"):
            bf16, _ = target_logprobs(tiny_llama, ids, mask, targets)
        rows16 = store[-1]
    # The residual stream stays fp32 under autocast (only matrix products round).
    assert rows16.dtype == torch.float32
    torch.testing.assert_close(rows16, rows32, rtol=RTOL, atol=RTOL * float(rows32.abs().mean()))
    rows = targets.sum(1).tolist()
    seq32 = torch.stack([s.sum() for s in fp32.split(rows)])
    seq16 = torch.stack([s.sum() for s in bf16.split(rows)])
    torch.testing.assert_close(seq16, seq32, rtol=RTOL, atol=0.0)
    margin32, margin16 = seq32[0] - seq32[1], seq16[0] - seq16[1]
    assert abs(margin16 - margin32) <= 0.05 + RTOL * abs(margin32)


def test_bf16_training_losses_follow_fp32(tiny_llama, tiny_tokenizer):
    """Five SGD steps on the same batch: the bf16-mixed loss curve tracks the fp32 one."""
    import copy

    torch.manual_seed(0)
    ids = torch.randint(3, 200, (4, 24))

    def curve(precision: str) -> list[float]:
        model = copy.deepcopy(tiny_llama).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        losses = []
        for _ in range(5):
            with P.autocast(precision, "cpu"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.float().backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        return losses

    fp32, bf16 = curve("32-true"), curve("bf16-mixed")
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(fp32), rtol=RTOL, atol=0.0)
    assert fp32[-1] < fp32[0] and bf16[-1] < bf16[0]  # both learn


def _saved_bytes_and_grads(model, ids):
    """Bytes of the distinct tensors autograd saves for backward that nothing else holds (the
    parameters live anyway), and the gradients."""
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    model.zero_grad(set_to_none=True)
    saving = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with saving, torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sum(storages.values()), loss.detach(), grads


def _lora_model_and_ids(tiny_llama):
    from sts_lightning.training.lora import LoraConfig, apply_lora

    model = apply_lora(copy.deepcopy(tiny_llama), LoraConfig(r=4))
    return model, torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))


def _same_bits_after(install, model, ids):
    """``(bytes kept before, after, handles)`` around ``install(model)``, whose loss and
    gradients must equal the ones before to the bit."""
    before, loss, grads = _saved_bytes_and_grads(model, ids)
    handles = install(model)
    after, new_loss, new_grads = _saved_bytes_and_grads(model, ids)
    assert torch.equal(loss, new_loss) and grads.keys() == new_grads.keys()
    assert all(torch.equal(grads[n], new_grads[n]) for n in grads)
    return before, after, handles


def test_shared_input_casts_save_copies_and_change_no_bit(tiny_llama):
    """q/k/v (gate/up) read one bf16 copy of their input: fewer bytes kept for backward, the
    same loss and gradients to the bit."""
    model, ids = _lora_model_and_ids(tiny_llama)
    before, after, handles = _same_bits_after(P.share_input_casts, model, ids)
    # Per layer, the bf16 copies of (B·T, d) inputs kept for backward go from 6 to 3 here.
    layers, width = model.config.num_hidden_layers, model.config.hidden_size
    assert before - after == 3 * layers * ids.numel() * width * 2, (before, after)
    cache = handles[0].hooks_dict_ref()[handles[0].id].__self__
    assert cache.copies == {}  # nothing outlives the forward
    for handle in handles:
        handle.remove()
    assert _saved_bytes_and_grads(model, ids)[0] == before


def test_shared_input_casts_do_nothing_in_fp32(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    P.share_input_casts(model)
    ids = torch.randint(3, 200, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_llama(ids).logits)


def _frozen_weights_read_with_grad(model, ids) -> int:
    """Elements of the frozen Linear weights whose input needs a gradient in a forward."""
    seen: dict[int, int] = {}

    def note(module, args):
        if args[0].requires_grad and not module.weight.requires_grad:
            seen[id(module)] = module.weight.numel()

    handles = [m.register_forward_pre_hook(note) for m in model.modules()
               if isinstance(m, torch.nn.Linear)]  # fmt: skip
    model(ids)
    for handle in handles:
        handle.remove()
    return sum(seen.values())


def test_recast_frozen_weights_keep_no_copies_and_change_no_bit(tiny_llama):
    """A LoRA model's frozen Linear weights (and the tied head) keep no bf16 copy for backward:
    fewer bytes kept, the same loss and adapter gradients to the bit, with the shared input
    casts on as in training."""
    model, ids = _lora_model_and_ids(tiny_llama)
    P.share_input_casts(model)
    before, after, handles = _same_bits_after(P.recast_frozen_weights, model, ids)
    # Every frozen Linear whose input needs a gradient kept a bf16 copy of its weight; in the
    # first layer q/k/v and gate/up read the frozen embedding's output and keep nothing.
    assert before - after == 2 * _frozen_weights_read_with_grad(model, ids), (before, after)
    for handle in handles:
        handle.remove()
    assert _saved_bytes_and_grads(model, ids)[0] == before


def test_recast_frozen_weights_leave_trained_and_fp32_alone(tiny_llama):
    """Trained weights keep autocast's cached cast, fp32 runs and no-grad forwards their own
    path: the same numbers, and in full fine-tuning the same saved bytes."""
    model = copy.deepcopy(tiny_llama)
    ids = torch.randint(3, 200, (1, 9), generator=torch.Generator().manual_seed(1))
    before, loss, grads = _saved_bytes_and_grads(model, ids)
    P.recast_frozen_weights(model)
    after, same_loss, same_grads = _saved_bytes_and_grads(model, ids)
    assert before == after and torch.equal(loss, same_loss)
    assert all(torch.equal(grads[n], same_grads[n]) for n in grads)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_llama(ids).logits)


def test_prepare_model_recasts_the_frozen_base_of_a_lora_model(tiny_llama):
    from sts_lightning.training.base import prepare_model
    from sts_lightning.training.lora import LoraConfig

    lora = prepare_model(copy.deepcopy(tiny_llama), lora=LoraConfig(r=4))
    base = [m.base_layer for m in lora.modules() if hasattr(m, "base_layer")]
    assert base and all("forward" in vars(m) for m in base)
    assert not any(p.requires_grad for m in base for p in m.parameters())


def test_recast_layers_still_copy_and_pickle():
    """A recast layer's forward belongs to the layer: a deep copy or an unpickled model runs
    its own weights, on the same path."""
    import pickle

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).requires_grad_(False)
    P.recast_frozen_weights(net)
    x = torch.randn(3, 4, requires_grad=True)
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        with torch.no_grad():
            other[1].weight.mul_(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, z = net(x), other(x)
        assert type(z.grad_fn).__name__ == "_RecastLinearBackward"
        assert not torch.equal(y, z)  # the copy's own (doubled) weight, not the original's
        with torch.no_grad():
            other[1].weight.div_(2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(net(x), other(x))

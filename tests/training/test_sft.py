"""SFTModule on a tiny random Llama: answer-only loss, learning, LoRA, resume, DDP, HF export."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from sts_lightning.data.prompts import Example
from sts_lightning.training.data import SFTDataModule
from sts_lightning.training.lora import LoraConfig
from sts_lightning.training.sft import SFTModule, answer_nll

# Memorisable: 12 distinct short answers the tiny model cannot know in advance.
EXAMPLES = [Example(f"What is {i} + {i}?", f"The answer is {2 * i}.") for i in range(12)]


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: fastest for a width-32 model, and immune to another process on the second
    core (a 2-thread op waits for its descheduled thread: 100x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_llama, tiny_tokenizer):
    """The tiny Llama and tokenizer saved as a checkpoint the module loads by path."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


class _Losses(Callback):
    """Per-step training losses, in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


class _StopAt(Callback):
    """Ends the run after ``step`` optimizer steps, as an interruption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trainer.should_stop = trainer.should_stop or trainer.global_step >= self.step


def _trainer(tmp_path, max_steps: int, **kwargs) -> Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


def _data(tokenizer=None, **kwargs) -> SFTDataModule:
    kwargs = {"train_size": None, "batch_size": 4, "max_length": 64, "seed": 0, **kwargs}
    return SFTDataModule(EXAMPLES, tokenizer=tokenizer, **kwargs)


def test_loss_is_masked_nll_of_answer_tokens(tiny_dir, tiny_tokenizer):
    module = SFTModule(tiny_dir)
    data = _data(tiny_tokenizer)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    model = module.model.eval()
    with torch.no_grad():
        nll, n = answer_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # By hand: full logits, shifted, NLL kept only where the next token is labelled.
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    token_nll = -logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]  # (B, T-1)
    assert n == keep.sum() and 0 < n < batch["attention_mask"].sum() / 2
    torch.testing.assert_close(nll, token_nll[keep].sum(), rtol=1e-5, atol=1e-4)
    # The labelled positions are the answers only: nothing on padding, nothing before an answer.
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    first = (batch["labels"] != -100).int().argmax(dim=1)  # (B,) first labelled position
    assert (first > 10).all()  # after the system turn and the question


def test_fit_learns_logs_and_saves_hf_model(tmp_path, tiny_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    seed_everything(0)
    module = SFTModule(tiny_dir, learning_rate=3e-3, warmup_steps=2)
    data = _data(val_files={}, val_from_train=4)  # tokenizer taken from the module at setup
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    logger = CSVLogger(tmp_path, name="run")
    losses = _Losses()
    trainer = _trainer(
        tmp_path,
        40,
        logger=logger,
        callbacks=[losses],
        log_every_n_steps=1,
        check_val_every_n_epoch=10,
    )
    trainer.fit(module, data)

    assert sum(losses.losses[-3:]) / 3 < 0.5 * sum(losses.losses[:3]) / 3
    after = module.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every weight trained
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/tokens", "lr", "val/loss", "val/loss/train_heldout"} <= set(
        metrics
    )
    n_answer_tokens = sum(sum(t != -100 for t in x["labels"]) for x in data.train_dataset)
    # 8 training rows in batches of 4: 40 steps are 20 epochs.
    assert module.tokens_seen == metrics["train/tokens"] == 20 * n_answer_tokens
    assert metrics["lr"] < 1e-4  # cosine decayed to ~0

    saved = AutoModelForCausalLM.from_pretrained(f"{logger.log_dir}/hf_model").eval()
    ids = torch.tensor([data.train_dataset[0]["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(saved(ids).logits, module.model.eval()(ids).logits)


def test_lora_trains_only_the_adapter(tmp_path, tiny_dir):
    seed_everything(0)
    module = SFTModule(tiny_dir, learning_rate=1e-2, lora=LoraConfig(r=4, alpha=8))
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = _trainer(tmp_path, 6)
    trainer.fit(module, _data())
    after = module.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert {k for k in before if "lora_B" in k} <= changed  # B starts at 0: it must have moved
    assert (tmp_path / "hf_model" / "adapter_config.json").is_file()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "hf_model").eval()
    ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, module.model.eval()(ids).logits)


@pytest.mark.parametrize("lora", [None, LoraConfig(r=4)], ids=["full", "lora"])
def test_resume_mid_epoch_matches_uninterrupted(tmp_path, tiny_dir, lora):
    def run(max_steps: int, ckpt_path=None, callbacks=()):
        seed_everything(0)
        module = SFTModule(tiny_dir, learning_rate=3e-3, warmup_steps=2, lora=lora)
        losses = _Losses()
        trainer = _trainer(
            tmp_path, max_steps, callbacks=[losses, *callbacks], enable_checkpointing=True
        )
        # 12 examples, batch 5: epochs of 3 batches (5, 5, 2); step 4 stops inside epoch 2.
        trainer.fit(module, _data(batch_size=5), ckpt_path=ckpt_path)
        return module, losses.losses

    _, uninterrupted = run(7)
    # Stopped by a callback, not by max_steps: the LR schedule must see the same total.
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=1)
    run(7, callbacks=[ckpt, _StopAt(4)])
    last = tmp_path / "ckpt" / "epoch=1-step=4.ckpt"
    module, resumed = run(7, ckpt_path=last)
    torch.testing.assert_close(resumed, uninterrupted[4:], rtol=1e-5, atol=1e-6)

    stored = torch.load(last, weights_only=False)["state_dict"]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(stored) == trainable | {"tokens_seen"}  # frozen weights reload from the base
    restored = SFTModule.load_from_checkpoint(last)
    assert restored.tokens_seen == stored["tokens_seen"]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_micro_batches_give_the_whole_batch_gradient(tmp_path, tiny_dir, accumulate):
    """Parts of 3 rows (the last of 1) train exactly as the whole batch of 4: the same logged
    losses and weights, also under gradient accumulation (the parts' losses summed, each over
    the batch's tokens, not a mean of part means). SGD: Adam's first steps take the sign of
    near-zero gradients, which rounding may flip."""
    import functools

    sgd = functools.partial(torch.optim.SGD, lr=0.5)

    def fit(micro):
        seed_everything(0)
        module = SFTModule(tiny_dir, learning_rate=0.5, optimizer=sgd, micro_batch_size=micro)
        losses = _Losses()
        trainer = _trainer(tmp_path, 3, accumulate_grad_batches=accumulate, callbacks=[losses])
        trainer.fit(module, _data())
        return losses.losses, module.model.state_dict(), int(module.tokens_seen)

    whole, parts = fit(None), fit(3)
    torch.testing.assert_close(parts[0], whole[0], rtol=1e-5, atol=1e-6)
    for key, value in whole[1].items():
        torch.testing.assert_close(parts[1][key], value, rtol=1e-4, atol=1e-6)
    assert parts[2] == whole[2] > 0


def test_split_rows_trims_each_part_to_its_longest_row():
    from sts_lightning.training.sft import split_rows

    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0], [5, 0, 0, 0], [5, 6, 7, 0]])
    mask = (ids > 0).long()
    labels = torch.where(mask.bool(), ids, -100)
    parts = split_rows((ids, mask, labels, None), 2, pad_to_multiple_of=1)
    assert [tuple(p[0].shape) for p in parts] == [(2, 4), (2, 3)]
    assert torch.equal(parts[1][2], labels[2:, :3]) and parts[1][3] is None
    # Rounded up as the collator pads (here to 2: 3 -> 4), never past the batch's width.
    assert [tuple(p[0].shape) for p in split_rows((ids, mask, labels, None), 3, 2)] == [
        (3, 4),
        (1, 4),
    ]
    packed = split_rows((ids, None, labels, torch.zeros_like(ids)), 3)  # no mask: full width
    assert [tuple(p[3].shape) for p in packed] == [(3, 4), (1, 4)]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="`learning_rate`"):
        SFTModule("x", learning_rate=0.0)
    with pytest.raises(ValueError, match="`warmup_steps`"):
        SFTModule("x", warmup_steps=-1)
    with pytest.raises(ValueError, match="`lr_scheduler_type`"):
        SFTModule("x", lr_scheduler_type="step")
    with pytest.raises(ValueError, match="`model_init_kwargs` must not set 'dtype'"):
        SFTModule("x", model_init_kwargs={"dtype": "bfloat16"})
    with pytest.raises(ValueError, match="`micro_batch_size` must be a positive int"):
        SFTModule("x", micro_batch_size=0)
    with pytest.raises(ValueError, match="`r`"):
        LoraConfig(r=0)
    assert "model" not in SFTModule("no/such/model")._modules  # nothing loads before it is used


_DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from lightning.pytorch import Trainer, seed_everything
    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.data.prompts import Example
    from sts_lightning.training.sft import SFTModule

    path, out = sys.argv[1], sys.argv[2]
    seed_everything(0)
    examples = [Example(f"What is {i} + {i}?", f"The answer is {2 * i}.") for i in range(12)]
    module = SFTModule(path, learning_rate=3e-3)
    data = SFTDataModule(examples, train_size=None, batch_size=3, val_from_train=4, max_length=64)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=4, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=out, num_sanity_val_steps=0, check_val_every_n_epoch=2,
    )
    trainer.fit(module, data)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        answer_tokens = [sum(t != -100 for t in x["labels"]) for x in data.train_dataset]
        json.dump({"metrics": metrics, "world": trainer.world_size,
                   "epoch_tokens": sum(answer_tokens)}, open(out + "/result.json", "w"))
    """
)


def test_ddp_two_processes(tmp_path, tiny_dir):
    script = tmp_path / "ddp_sft.py"
    script.write_text(_DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), tiny_dir, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    metrics = result["metrics"]
    assert result["world"] == 2
    assert {"train/loss", "val/loss/train_heldout"} <= set(metrics)
    # 8 training rows, 4 per rank, batches of 3 and 1: 4 steps are 2 epochs over both ranks,
    # and the token count is summed over ranks.
    assert metrics["train/tokens"] == 2 * result["epoch_tokens"]


@pytest.mark.parametrize("freeze", [True, False])
def test_tied_embedding_frozen_and_checkpointed_consistently(tmp_path, tiny_tokenizer, freeze):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "tied")
    tiny_tokenizer.save_pretrained(tmp_path / "tied")
    module = SFTModule(str(tmp_path / "tied"), freeze_tied_embeddings=freeze)
    assert module.model.get_input_embeddings().weight.requires_grad is not freeze
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    tied = {"model.model.embed_tokens.weight", "model.lm_head.weight"}
    # Both names of the tied matrix are stored, or neither: never one trained, one from the base.
    assert tied & set(checkpoint["state_dict"]) == (set() if freeze else tied)

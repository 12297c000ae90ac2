"""Stop-and-resume equals an uninterrupted run: SFT, GRPO, the STS callback, metric states.

Already proven elsewhere, not repeated: SFT loss curves after a mid-epoch resume
(tests/training/test_sft.py::test_resume_mid_epoch_matches_uninterrupted, full and LoRA),
GRPO curves (tests/training/test_grpo.py::test_resume_reproduces_the_uninterrupted_curve), the
STS callback restoring its forecast without recomputing it (tests/callbacks/test_sts.py), the
HF/TRL twin (tests/callbacks/test_hf.py::test_resume_twice_keeps_forecast_reports_and_state) and
SFT weights after a Ctrl-C (tests/callbacks/test_faults.py). Here: the exact batches after a
resume from each kind of checkpoint (mid-epoch, at an epoch's last batch, in
`on_train_epoch_end`, after `fit`), final weights, the STS callback's whole history against an
uninterrupted run, and metric states saved mid-stream.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.metric import TransferabilityCorrelation
from sts_lightning.monitor.tracker import TrackerConfig
from sts_lightning.stats import LatentMoments, PairedShift

EXAMPLES = [Example(f"What is {i} + {i}?", f"The answer is {2 * i}.") for i in range(12)]
DOMAINS = {
    "law": [f"The court held that contract {i} was void." for i in range(8)],
    "bio": [f"Photosynthesis converts light energy in plants {i}." for i in range(8)],
    "math": [f"Solve {i} * 4 - 5. The answer is {4 * i - 5}." for i in range(8)],
}


# Width-32 models: one thread is fastest, and immune to a busy second core.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_llama, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        trainer.should_stop = trainer.should_stop or trainer.global_step >= self.step


def _sts(sae):
    from sts_lightning.callbacks import STSCallback

    return STSCallback(
        sae,
        domains=DOMAINS,
        train_examples=EXAMPLES,
        k=8,
        every_n_steps=2,
        predict_config=PredictConfig(
            domain_demos=1, train_tokens=80, domain_tokens=60, batch_size=16, progress=False
        ),
        tracker_config=TrackerConfig(probe_tokens=80, eval_tokens=60),
    )


def test_sts_callback_resumed_equals_uninterrupted(tmp_path, tiny_dir, tiny_sae):
    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.training.sft import SFTModule

    def run(callbacks, ckpt_path=None):
        seed_everything(0)
        sts = _sts(tiny_sae)
        trainer = Trainer(
            accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
            callbacks=[sts, *callbacks], enable_checkpointing=any(
                isinstance(c, ModelCheckpoint) for c in callbacks
            ),
        )  # fmt: skip
        data = SFTDataModule(EXAMPLES, train_size=None, batch_size=5, max_length=64, seed=0)
        trainer.fit(SFTModule(tiny_dir, learning_rate=3e-3), data, ckpt_path=ckpt_path)
        return sts.tracker

    full = run([])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_train_steps=2)
    run([ckpt, _StopAt(4)])  # interrupted mid-epoch 2 (3 batches per epoch)
    resumed = run([], ckpt_path=tmp_path / "ckpt" / "epoch=1-step=4.ckpt")
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history] == [2, 4, 6]
    for got, want in zip(resumed.history, full.history, strict=True):
        assert got.keys() == want.keys()
        for key in want:  # the steps before the stop come from the checkpoint, the rest re-run
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7, nan_ok=True), key
    assert torch.equal(resumed.probe["rows"], full.probe["rows"])
    assert torch.equal(resumed.prediction.shift, full.prediction.shift)
    assert resumed.base_scores == full.base_scores


def test_grpo_resumed_weights_equal_uninterrupted(tmp_path, tiny_llama, tiny_tokenizer):
    from sts_lightning.training.data import PromptDataModule
    from tests.training.test_grpo import PROMPTS, make_module

    def run(callbacks=(), ckpt_path=None):
        module = make_module(
            tiny_llama, tiny_tokenizer, learning_rate=0.05, lr_scheduler_type="linear"
        )
        trainer = Trainer(
            accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks),
        )  # fmt: skip
        data = PromptDataModule(PROMPTS, train_size=None, batch_size=2, seed=3)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return trainer

    full = run()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_train_steps=1)
    run([ckpt, _StopAt(3)])  # 2 batches per epoch: stopped inside epoch 2
    resumed = run(ckpt_path=tmp_path / "epoch=1-step=3.ckpt")
    assert resumed.global_step == full.global_step == 4
    pairs = zip(
        resumed.lightning_module.model.named_parameters(),
        full.lightning_module.model.parameters(),
        strict=True,
    )
    for (name, a), b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    opt_a = resumed.optimizers[0].state_dict()["state"]
    opt_b = full.optimizers[0].state_dict()["state"]
    for key in opt_b:  # AdamW moments too: a resumed run keeps going the same way
        a, b = opt_a[key]["exp_avg"], opt_b[key]["exp_avg"]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


class _Batches(Callback):
    """``(epoch, batch_idx, contents)`` of every training batch: prompts, or input ids."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        contents = batch["prompt"] if "prompt" in batch else batch["input_ids"].tolist()
        self.seen.append((trainer.current_epoch, batch_idx, contents))


# Where the checkpoint is taken: at a batch's end mid-epoch or at the epoch's last batch
# (`every_n_train_steps`), in `on_train_epoch_end` (ModelCheckpoint's default), or by
# `trainer.save_checkpoint` once a `fit` stopped at the epoch's end returned. 3 batches per epoch.
CHECKPOINTS = {"batch_end_mid": 2, "batch_end_last": 3, "epoch_end": 3, "after_fit": 3}


def _batches_after_resume(tmp_path, fit, where: str, stop: int):
    """The batches of an uninterrupted run and of one stopped at step ``stop`` and resumed."""
    full = fit([], None)
    if where == "after_fit":
        first = _Batches()
        fit([first, _StopAt(stop)], None, save=tmp_path / "stopped.ckpt")
        ckpt = tmp_path / "stopped.ckpt"
    else:
        every = {"every_n_epochs": 1} if where == "epoch_end" else {"every_n_train_steps": 1}
        ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, **every)
        fit([ckpt_cb, _StopAt(stop)], None)
        (ckpt,) = (tmp_path / "ckpt").glob(f"*-step={stop}.ckpt")
    return full, fit([], ckpt)


@pytest.mark.parametrize("where", CHECKPOINTS)
def test_grpo_resumed_batches_equal_uninterrupted(tmp_path, tiny_llama, tiny_tokenizer, where):
    from sts_lightning.training.data import PromptDataModule
    from tests.training.test_grpo import make_module

    prompts = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]

    def fit(callbacks, ckpt_path, save=None):
        batches = _Batches()
        module = make_module(
            tiny_llama, tiny_tokenizer, grpo={"num_generations": 2, "max_completion_length": 2}
        )
        trainer = Trainer(
            accelerator="cpu", max_steps=7, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[batches, *callbacks],
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
            default_root_dir=tmp_path,
        )  # fmt: skip
        data = PromptDataModule(prompts, train_size=None, batch_size=2, seed=3)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        if save is not None:
            trainer.save_checkpoint(save)
        return batches.seen

    stop = CHECKPOINTS[where]
    full, resumed = _batches_after_resume(tmp_path, fit, where, stop)
    assert len(full) == 7 and len({str(b[2]) for b in full[:3]} | {str(full[3][2])}) == 4
    # Same prompts, in the same epoch and at the same batch index, from the resume point on.
    assert resumed == full[stop:]


@pytest.mark.parametrize("where", ["batch_end_mid", "epoch_end", "after_fit"])
def test_sft_resumed_batches_equal_uninterrupted_with_accumulation(tmp_path, tiny_dir, where):
    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.training.sft import SFTModule

    def fit(callbacks, ckpt_path, save=None):
        batches = _Batches()
        trainer = Trainer(
            accelerator="cpu", max_steps=5, accumulate_grad_batches=2, logger=False,
            enable_progress_bar=False, enable_model_summary=False,
            callbacks=[batches, *callbacks], default_root_dir=tmp_path,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        )  # fmt: skip
        data = SFTDataModule(EXAMPLES[:6], train_size=None, batch_size=2, max_length=64, seed=0)
        trainer.fit(SFTModule(tiny_dir, learning_rate=3e-3), data, ckpt_path=ckpt_path)
        if save is not None:
            trainer.save_checkpoint(save)
        return batches.seen

    # 3 batches per epoch, 2 optimizer steps: [b0 b1] [b2]. Step 2 ends epoch 0 (3 batches);
    # step 3 falls mid-epoch 1 (5 batches).
    stop = 3 if where == "batch_end_mid" else 2
    full, resumed = _batches_after_resume(tmp_path, fit, where, stop)
    assert len(full) == 8
    assert resumed == full[{2: 3, 3: 5}[stop] :]


def test_sft_length_grouped_batches_resume_mid_epoch(tmp_path, tiny_dir):
    """Batches grouped across megabatches (40 rows, 5 batches of 2 per megabatch) resume as
    an uninterrupted run continues."""
    from sts_lightning.training.data import SFTDataModule
    from sts_lightning.training.sft import SFTModule

    rows = [Example("Q " + "ab " * (i % 13), f"A{i}") for i in range(40)]

    def fit(callbacks, ckpt_path, group=True):
        batches = _Batches()
        trainer = Trainer(
            accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[batches, *callbacks], default_root_dir=tmp_path,
            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        )  # fmt: skip
        data = SFTDataModule(rows, train_size=None, batch_size=2, max_length=96, seed=0,
                             group_by_length=group, pad_to_multiple_of=1)  # fmt: skip
        trainer.fit(SFTModule(tiny_dir, learning_rate=3e-3), data, ckpt_path=ckpt_path)
        return batches.seen

    full, resumed = _batches_after_resume(tmp_path, fit, "batch_end_mid", 3)
    assert resumed == full[3:] and len(full) == 6

    def padding(seen):  # padding positions hold the pad id 0
        return sum(row.count(0) for _, _, batch in seen for row in batch)

    plain = fit([], None, group=False)
    assert padding(full) < padding(plain) / 2, (padding(full), padding(plain))


@pytest.mark.parametrize("kind", ["moments", "shift", "correlation"])
def test_metric_state_saved_mid_stream_continues_exactly(kind):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(7, 5, generator=gen, dtype=torch.float64) for _ in range(4)]

    def new():
        if kind == "correlation":
            return TransferabilityCorrelation(seed=1, n_bootstrap=300)
        return LatentMoments(5) if kind == "moments" else PairedShift(5)

    def feed(metric, xs):
        for x in xs:
            if kind == "moments":
                metric.update(x)
            elif kind == "shift":
                metric.update(x, x.square())
            else:
                metric.update(x[:, 0], x[:, 1])

    full = new()
    feed(full, batches)
    first = new()
    feed(first, batches[:2])
    first.persistent(True)
    state = first.state_dict()
    resumed = new()
    resumed.persistent(True)
    resumed.load_state_dict(state)
    feed(resumed, batches[2:])
    for key, want in full.compute().items():
        torch.testing.assert_close(resumed.compute()[key], want, rtol=1e-12, atol=0, msg=key)

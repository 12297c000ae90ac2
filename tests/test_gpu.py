"""On a CUDA device, every GPU path gives what the CPU gives (skipped without a GPU).

The SAE here is a plain torch module (encode/decode, ``W_enc``), so the checks need neither
sae-lens nor the network: streaming statistics fed with GPU rows, the experiment's forecasts and
held-out pass with the model and SAE on the GPU, and a Lightning fine-tune with the STS callback.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.experiment.test_forecast import CFG, DOMAINS, TRAIN

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class StubSAE(nn.Module):
    """A ReLU SAE reading the residual stream after layer 1 of a width-32 model."""

    def __init__(self, d_in: int = 32, d_sae: int = 64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        self.b_enc = nn.Parameter(0.5 * torch.randn(d_sae, generator=g))
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=g) / d_sae**0.5)

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, z):
        return z @ self.W_dec


def test_streaming_stats_accept_gpu_rows():
    from sts_lightning.stats import LatentMoments, PairedShift

    g = torch.Generator().manual_seed(0)
    base, shifted = torch.rand(50, 16, generator=g), torch.rand(50, 16, generator=g)
    cpu_m, gpu_m = LatentMoments(16), LatentMoments(16)
    cpu_s, gpu_s = PairedShift(16), PairedShift(16)
    cpu_m.update(base)
    cpu_s.update(base, shifted)
    gpu_m.update(base.cuda())  # the metric stays on the CPU, the rows come from the GPU
    gpu_s.update(base.cuda(), shifted.cuda())
    assert torch.allclose(gpu_m.compute()["mean_sq"], cpu_m.compute()["mean_sq"])
    assert torch.allclose(gpu_s.feature_shift(), cpu_s.feature_shift())


def test_forecast_and_heldout_pass_on_gpu_equal_cpu(tiny_llama, tiny_tokenizer):
    from sts_lightning.experiment.forecast import Forecaster, score_domains
    from sts_lightning.experiment.realised import compare, item_losses
    from sts_lightning.monitor.evaluation import encode_eval_set

    out = {}
    for device in ("cpu", "cuda"):
        model, sae = copy.deepcopy(tiny_llama).to(device), StubSAE().to(device)
        f = Forecaster(model, tiny_tokenizer, sae, 1, CFG)
        scores = score_domains(f.domains(DOMAINS, 0), f.task(TRAIN, 0, TRAIN[:4]), 8, 8)
        enc = {n: encode_eval_set(tiny_tokenizer, ex, 100) for n, ex in DOMAINS.items()}
        kw = dict(layer=1, pad_token_id=0)
        base = item_losses(model, enc, **kw)
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(1.5)
        out[device] = (scores, compare(base, item_losses(model, enc, **kw), sae, 1e4))
    for name in DOMAINS:
        for mode, value in out["cpu"][0][name].items():
            assert out["cuda"][0][name][mode] == pytest.approx(value, rel=1e-3, abs=1e-5), mode
        for key in ("delta", "post_shift_sae", "post_shift_resid"):
            assert out["cuda"][1][name][key] == pytest.approx(
                out["cpu"][1][name][key], rel=1e-3, abs=1e-6
            ), key


def test_finetune_with_sts_callback_on_gpu(tmp_path, tiny_llama, tiny_tokenizer):
    from sts_lightning.experiment.config import ExperimentConfig, FinetuneConfig
    from sts_lightning.experiment.finetune import finetune
    from sts_lightning.experiment.forecast import Forecaster, to_prediction

    tiny_llama.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    sae = StubSAE()
    f = Forecaster(tiny_llama, tiny_tokenizer, sae, 1, CFG)
    d, t = f.domains(DOMAINS, 0), f.task(TRAIN, 0)
    pred = to_prediction(d, t, layer=1, k=8, max_norm=1e4, config=CFG)
    job = ExperimentConfig(
        model=str(tmp_path / "m"),
        domains=[],
        domain_files=dict.fromkeys(DOMAINS, ""),
        contrast_task=None,
        predict=CFG,
        finetune=FinetuneConfig(steps=3, batch_size=4, lr=1e-2, track_every=1),
    )
    _, _, tracker = finetune(job, "sums", False, TRAIN, 0, sae, pred, DOMAINS, tmp_path / "r")
    assert [h["step"] for h in tracker.history] == [1.0, 2.0, 3.0]
    assert next(sae.parameters()).is_cuda  # the callback moved the SAE to the module's device
    assert tracker.history[-1]["sts/shift/total"] > 0  # the GPU weights moved the latents


def test_whole_experiment_on_gpu(tmp_path, monkeypatch, tiny_llama, tiny_tokenizer):
    import json

    from sts_lightning.experiment.config import EvalConfig, ExperimentConfig, FinetuneConfig
    from sts_lightning.experiment.run import run_experiment
    from sts_lightning.model import sae_source
    from tests.experiment.test_run import DOMAINS as FILES
    from tests.experiment.test_run import SUMS, WORDS

    tiny_llama.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    files = {}
    for name, rows in {**FILES, "sums": SUMS, "words": WORDS}.items():
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    monkeypatch.setattr(sae_source, "resolve_run_sae", lambda *args, **kwargs: StubSAE())
    job = ExperimentConfig(
        model=str(tmp_path / "m"),
        sae="stub",
        tasks=[str(files["sums"]), str(files["words"])],
        contrast_task=None,
        domains=[],
        domain_files={n: str(files[n]) for n in FILES},
        seeds=[0, 1],
        predict=CFG,
        raw_k=8,
        finetune=FinetuneConfig(steps=2, batch_size=4, lr=1e-2, track_every=1),
        evaluation=EvalConfig(tokens=60),
        n_bootstrap=50,
        output_dir=str(tmp_path / "out"),
        wandb=False,
    )
    results = run_experiment(job)
    assert (tmp_path / "out" / "report.md").is_file()
    for run in results["runs"]:
        assert all(r["post_shift_sae"] > 0 for r in run["realised"].values())

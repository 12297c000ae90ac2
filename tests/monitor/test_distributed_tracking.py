"""Two CPU processes (gloo): the forecast and the realised shift equal one process's, exactly.

tests/test_distributed.py covers the streaming statistics and the metric, and the STS callback
under Lightning DDP (whose training itself differs slightly from one process). Here ``predict``
and ``STSTracker.measure`` run inside an initialised process group on the same weights: each
rank must compute what a single process does, with nothing summed across ranks.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from tests.test_distributed import run_workers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
]


def _measure() -> dict[str, object]:
    """Forecast at θ_0, then the realised shift after a fixed, seeded weight perturbation."""
    from sts_lightning.data.prompts import Example
    from sts_lightning.forecast.config import PredictConfig
    from sts_lightning.forecast.predict import predict
    from sts_lightning.monitor.tracker import STSTracker, TrackerConfig
    from tests.callbacks.test_sts import TEXTS
    from tests.conftest import make_tiny_model, make_tiny_sae, make_tiny_tokenizer

    torch.set_num_threads(1)
    tokenizer = make_tiny_tokenizer()
    model, sae = make_tiny_model("llama", len(tokenizer)), make_tiny_sae()
    train = [Example(t) for t in TEXTS["arith"]]
    domains = {n: [Example(t) for t in v] for n, v in TEXTS.items()}
    cfg = PredictConfig(k=8, domain_demos=1, train_tokens=120, domain_tokens=80, progress=False)
    pred = predict(model, tokenizer, sae, train, domains, cfg)
    scored = {n: v[:10] for n, v in domains.items()}
    heldout = {n: v[10:] for n, v in domains.items()}
    tracker = STSTracker(
        sae, train, scored, heldout, cfg, TrackerConfig(probe_tokens=120, eval_tokens=60)
    )
    tracker.start(model, tokenizer)
    with torch.no_grad():  # "training": the same update on every rank, as DDP keeps it
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    metrics, _ = tracker.measure(model, tokenizer, step=1)
    return {
        "shift": pred.shift.tolist(),  # plain lists: tensors in a queue outlive no worker
        "top": pred.top_latents.tolist(),
        "act": pred.scores("act"),
        "icl": pred.scores("icl"),
        "n_tokens": pred.train["n_tokens"],
        "metrics": metrics,
    }


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        queue.put((rank, _measure()))
    finally:
        dist.destroy_process_group()


def test_forecast_and_realised_shift_under_two_processes_equal_one():
    results = run_workers(_worker, 2, 29700 + os.getpid() % 1000, timeout=300)
    single = _measure()
    for rank in (0, 1):
        got = results[rank]
        assert got["shift"] == single["shift"] and got["top"] == single["top"]
        assert got["act"] == single["act"] and got["icl"] == single["icl"]
        assert got["n_tokens"] == single["n_tokens"]  # each token counted once, not per rank
        assert got["metrics"].keys() == single["metrics"].keys()
        for key, value in single["metrics"].items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-6, nan_ok=True), key
    assert single["metrics"]["sts/shift/total"] > 0 and "sts/corr/pearson" in single["metrics"]

"""Two CPU processes (gloo) give the same statistics and correlation as one process."""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sts_lightning import LatentMoments, PairedShift, TransferabilityCorrelation

D = 48


def _data():
    g = torch.Generator().manual_seed(0)
    base = torch.relu(torch.randn(300, D, generator=g))
    shifted = base + 0.3 * torch.randn(300, D, generator=g)
    predicted = torch.randn(9, generator=g, dtype=torch.float64)
    realised = predicted + torch.randn(9, generator=g, dtype=torch.float64)
    return base, shifted, predicted, realised


def _single() -> dict[str, torch.Tensor]:
    base, shifted, predicted, realised = _data()
    shift, moments, corr = PairedShift(D), LatentMoments(D), TransferabilityCorrelation(seed=3)
    shift.update(base, shifted)
    moments.update(base)
    corr.update(predicted, realised)
    out = corr.compute()
    return {
        "shift": shift.feature_shift(),
        "mean_sq": moments.compute()["mean_sq"],
        **{k: out[k] for k in ("pearson", "spearman", "kendall", "pearson_ci_low")},
    }


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        base, shifted, predicted, realised = _data()
        rows = torch.arange(300).tensor_split(world)[rank]  # unequal shards on purpose
        doms = torch.arange(9).tensor_split(world)[rank]
        shift, moments, corr = PairedShift(D), LatentMoments(D), TransferabilityCorrelation(seed=3)
        shift.update(base[rows], shifted[rows])
        moments.update(base[rows])
        corr.update(predicted[doms], realised[doms])
        out = corr.compute()
        result = {
            "shift": shift.feature_shift(),
            "mean_sq": moments.compute()["mean_sq"],
            **{k: out[k] for k in ("pearson", "spearman", "kendall", "pearson_ci_low")},
        }
        # By value (numpy), not as shared tensors: those are fetched from the worker's fd
        # sharer, which is gone once the worker exits, before a busy parent reads the queue.
        queue.put((rank, {k: v.detach().cpu().numpy() for k, v in result.items()}))
    finally:
        dist.destroy_process_group()


def run_workers(worker, world: int, port: int, timeout: float) -> dict[int, object]:
    """Spawn ``worker(rank, world, port, queue)`` on ``world`` ranks; ``{rank: what it queued}``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, world, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(procs):  # fail fast if a worker dies instead of waiting it out
        assert time.monotonic() < deadline, "workers timed out"
        assert all(p.exitcode in (None, 0) for p in procs), "a worker failed (see its stderr)"
        with contextlib.suppress(queue_module.Empty):
            rank, result = queue.get(timeout=1)
            results[rank] = result
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_equal_one():
    results = run_workers(_worker, 2, 29500 + os.getpid() % 1000, timeout=180)
    single = _single()
    for rank in (0, 1):
        for key, value in single.items():
            # The domain order differs (rank 0's then rank 1's), which no correlation depends on.
            got = torch.from_numpy(results[rank][key])
            torch.testing.assert_close(got, value, rtol=1e-6, atol=1e-9, msg=key)


def _run_script(out, devices):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "ddp_callback.py"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [sys.executable, str(script), str(out), str(devices)],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    import json

    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]


def test_callback_under_ddp_matches_single_process(tmp_path):
    (single,) = _run_script(tmp_path / "one", 1)
    rank0, rank1 = _run_script(tmp_path / "two", 2)
    assert rank0 == rank1  # every rank sees the same forecast and realised statistics
    assert rank0["top"] == single["top"] and rank0["shift"] == single["shift"]
    assert rank0["act"] == single["act"]
    (h2,), (h1,) = rank0["history"], single["history"]
    assert h2["step"] == h1["step"] == 2
    assert h2["sts/shift/total"] == pytest.approx(h1["sts/shift/total"], rel=0.05)

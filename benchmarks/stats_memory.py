"""Peak memory and throughput: streaming per-latent statistics vs a dense token buffer.

Each configuration runs in a fresh subprocess and reports its peak RSS above a baseline taken
after imports and after the input batch exists, so the numbers are comparable side by side.

    python benchmarks/stats_memory.py [--d-sae 65536] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

DENSE_LIMIT_GB = 8.0  # larger dense buffers are reported as computed sizes, not allocated


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str, n_tokens: int, d_sae: int, batch: int) -> dict:
    from sts_lightning.stats import LatentMoments, PairedShift

    torch.manual_seed(0)
    rows = torch.relu(torch.randn(batch, d_sae) - 1.0)  # one batch, fed repeatedly
    other = torch.relu(torch.randn(batch, d_sae) - 1.0)
    moments, paired = LatentMoments(d_sae), PairedShift(d_sae)
    base_rss = _rss_mb()
    start = time.perf_counter()
    if mode == "dense":
        buffer = torch.empty(n_tokens, d_sae)  # what the reference code keeps
        for i in range(0, n_tokens, batch):
            buffer[i : i + batch] = rows[: n_tokens - i]
        result = buffer.mean(0).sum().item()
    elif mode == "moments":
        for _ in range(n_tokens // batch):
            moments.update(rows)
        result = moments.compute()["mean"].sum().item()
    else:
        for _ in range(n_tokens // batch):
            paired.update(rows, other)
        result = paired.feature_shift().sum().item()
    seconds = time.perf_counter() - start
    return {"peak_extra_mb": _peak_mb() - base_rss, "seconds": seconds, "result": result}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--d-sae", type=int, default=65536)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--tokens", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.d_sae, args.batch)))
        return

    def run(mode: str, n: int) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--d-sae",
            str(args.d_sae),
            "--batch",
            str(args.batch),
            "--child",
            mode,
            str(n),
        ]
        return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)

    print(
        f"d_sae = {args.d_sae}, batch = {args.batch} rows, torch threads = "
        f"{torch.get_num_threads()}"
    )
    print(
        f"{'tokens':>8} | {'dense MB':>10} | {'moments MB':>10} | {'paired MB':>10} | "
        f"{'moments tok/s':>13} | {'paired tok/s':>12}"
    )
    rows = {}
    for n in args.tokens:
        dense_gb = n * args.d_sae * 4 / 2**30
        if dense_gb <= DENSE_LIMIT_GB:
            dense = f"{run('dense', n)['peak_extra_mb']:10.0f}"
        else:
            dense = f"{dense_gb * 1024:9.0f}*"
        m, pr = run("moments", n), run("paired", n)
        rows[n] = (m, pr)
        print(
            f"{n:>8} | {dense:>10} | {m['peak_extra_mb']:10.1f} | {pr['peak_extra_mb']:10.1f} | "
            f"{n / m['seconds']:13,.0f} | {n / pr['seconds']:12,.0f}"
        )
    print("* computed size of the buffer (n_tokens × d_sae × 4 B), too large to allocate here")
    lo, hi = min(args.tokens), max(args.tokens)
    for i, name in enumerate(["moments", "paired"]):
        a, b = rows[lo][i]["peak_extra_mb"], rows[hi][i]["peak_extra_mb"]
        print(f"{name}: peak at {hi:,} / {lo:,} tokens = {b / a:.3f}")


if __name__ == "__main__":
    main()

"""Plots and tables of a tracked run: PNG files, and W&B tables/images through Lightning loggers.

Nothing here imports ``wandb``: rich objects go through ``WandbLogger.log_table`` /
``log_image`` when such a logger is present; every other logger gets the scalars only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["domain_rows", "log_rich", "save_plots", "top_latent_rows"]


def domain_rows(tracker) -> list[list[Any]]:
    """``[domain, predicted (mode), realised STS, realised delta]`` at the last measurement."""
    pred = tracker.prediction.scores(tracker.config.mode)
    last = tracker.history[-1] if tracker.history else {}
    return [
        [name, value, last.get(f"sts/realised/{name}"), last.get(f"sts/delta/{name}")]
        for name, value in pred.items()
    ]


def top_latent_rows(tracker, link_template: str | None = None, n: int = 20) -> list[list[Any]]:
    """``[rank, latent, predicted shift, link]`` of the top forecast latents."""
    pred = tracker.prediction
    rows = []
    for rank, j in enumerate(pred.top_latents[:n].tolist()):
        link = link_template.format(latent=j, layer=pred.layer) if link_template else ""
        rows.append([rank + 1, j, float(pred.shift[j]), link])
    return rows


def save_plots(tracker, directory: str | Path) -> dict[str, Path]:
    """Forecast-vs-realised scatter (with fit line) and shift/overlap over steps, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    rows = [r for r in domain_rows(tracker) if r[3] is not None]
    if rows:
        x = np.array([r[1] for r in rows], dtype=float)
        y = np.array([abs(r[3]) if tracker.config.absolute else r[3] for r in rows], dtype=float)
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ax.scatter(x, y)
        for r, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(r[0], (xi, yi), fontsize=8, xytext=(3, 3), textcoords="offset points")
        if len(rows) >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            grid = np.linspace(x.min(), x.max(), 50)
            ax.plot(grid, slope * grid + intercept, "--", color="gray")
        ax.set_xlabel(f"forecast STS_{tracker.config.mode}")
        ax.set_ylabel("|held-out loss delta|" if tracker.config.absolute else "loss delta")
        ax.set_title("forecast vs realised")
        fig.tight_layout()
        paths["scatter"] = directory / "forecast_vs_realised.png"
        fig.savefig(paths["scatter"], dpi=110)
        plt.close(fig)
    if tracker.history:
        steps = [h["step"] for h in tracker.history]
        overlap_key = next(k for k in tracker.history[0] if k.startswith("sts/shift/overlap@"))
        fig, ax1 = plt.subplots(figsize=(6, 4))
        ax1.plot(steps, [h["sts/shift/total"] for h in tracker.history], "o-", label="total shift")
        ax1.set_xlabel("step")
        ax1.set_ylabel("Σ_j realised Δ_j")
        ax2 = ax1.twinx()
        ax2.plot(steps, [h[overlap_key] for h in tracker.history], "s--", color="tab:orange")
        ax2.set_ylabel(overlap_key.split("/")[-1] + " (forecast vs realised)")
        fig.tight_layout()
        paths["shift"] = directory / "realised_shift.png"
        fig.savefig(paths["shift"], dpi=110)
        plt.close(fig)
    return paths


def log_rich(
    loggers: Iterable[Any], tracker, paths: dict[str, Path], link_template: str | None = None
) -> None:
    """Per-domain table, top-latent table and plots to every ``WandbLogger`` among ``loggers``."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        logger.log_table(
            "sts/domains",
            columns=["domain", "predicted", "realised_sts", "realised_delta"],
            data=domain_rows(tracker),
        )
        logger.log_table(
            "sts/top_latents",
            columns=["rank", "latent", "predicted_shift", "link"],
            data=top_latent_rows(tracker, link_template),
        )
        if paths:
            logger.log_image("sts/plots", images=[str(p) for p in paths.values()])

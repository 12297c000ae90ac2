"""Plots and tables of a tracked run: PNG files, and W&B tables/images.

Nothing here imports ``wandb``: rich objects go through ``WandbLogger.log_table`` /
``log_image`` when such a logger is present (Lightning), or through the ``wandb`` module HF's
``WandbCallback`` imported (HF/TRL ``report_to="wandb"``); every other logger gets the scalars
only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "domain_rows",
    "log_rich",
    "log_rich_hf",
    "rich_tables",
    "save_plots",
    "top_latent_rows",
]


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


def rich_tables(tracker, link_template: str | None = None) -> dict[str, tuple[list, list]]:
    """``{key: (columns, rows)}``: the per-domain and top-latent tables of a tracked run."""
    return {
        "sts/domains": (
            ["domain", "predicted", "realised_sts", "realised_delta"],
            domain_rows(tracker),
        ),
        "sts/top_latents": (
            ["rank", "latent", "predicted_shift", "link"],
            top_latent_rows(tracker, link_template),
        ),
    }


def log_rich(
    loggers: Iterable[Any], tracker, paths: dict[str, Path], link_template: str | None = None
) -> None:
    """Per-domain table, top-latent table and plots to every ``WandbLogger`` among ``loggers``."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        for key, (columns, rows) in rich_tables(tracker, link_template).items():
            logger.log_table(key, columns=columns, data=rows)
        if paths:
            logger.log_image("sts/plots", images=[str(p) for p in paths.values()])


def log_rich_hf(
    callbacks: Iterable[Any], tracker, paths: dict[str, Path], link_template: str | None = None
) -> bool:
    """The same tables and plots to the W&B run of an HF trainer's ``WandbCallback``.

    Uses the ``wandb`` module that HF's integration imported (``report_to`` includes
    ``"wandb"``) and its active run; without one, nothing is logged.

    Args:
        callbacks: The trainer's callbacks (``trainer.callback_handler.callbacks``).
        tracker: The tracked run.
        paths: The PNGs of :func:`save_plots`.
        link_template: Link per latent in the top-latent table.

    Returns:
        Whether a W&B run received them.
    """
    wandb = next(
        (c._wandb for c in callbacks if type(c).__name__ == "WandbCallback" and c._initialized),
        None,
    )
    if wandb is None or wandb.run is None:
        return False
    logs: dict[str, Any] = {
        key: wandb.Table(columns=columns, data=rows)
        for key, (columns, rows) in rich_tables(tracker, link_template).items()
    }
    if paths:
        logs["sts/plots"] = [wandb.Image(str(p)) for p in paths.values()]
    wandb.run.log(logs)
    return True

"""The experiment's report directory: ``report.md``, PNG figures, ``results.json``, a W&B run.

Everything is rendered from the results dict
(:func:`~sts_lightning.experiment.summary.summarise_runs` plus config and timings): no number is
typed by hand.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sts_lightning.experiment.analysis import fit_line
from sts_lightning.experiment.rank_agreement import rank_agreement_table
from sts_lightning.experiment.report_sections import (
    METRIC_TEXT,
    learning_banner,
    learning_table,
    measurement_banner,
    measurement_tables,
    not_learned_table,
    sign_text,
    specificity_banner,
    specificity_tables,
)
from sts_lightning.forecast.modes import PRIMARY

__all__ = ["write_report"]

_FORECAST_COLUMNS = (*PRIMARY, "act_contrast", "raw_act", "repsim_sae")  # tables and scatters
_SCATTER = (*_FORECAST_COLUMNS, "base_loss", "post_shift_sae")


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, tuples → lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = [head, ["---"] * len(head), *rows]  # a "|" in a cell (|Δ|) would split it: escaped
    return ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in lines]


def _figures(results: dict[str, Any], out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for task, table in results["tables"].items():
        domains = list(table)
        y = [abs(table[d]["delta"]) for d in domains]
        err = [table[d]["se"] for d in domains]
        preds = [p for p in _SCATTER if p in table[domains[0]]]
        fig, axes = plt.subplots(1, len(preds), figsize=(3.2 * len(preds), 3.2))
        for ax, p in zip(axes, preds, strict=True):
            x = [table[d][p] for d in domains]
            ax.errorbar(x, y, yerr=err, fmt="o", ms=4, capsize=2)
            slope, icpt = fit_line(x, y)
            if math.isfinite(slope):
                xs = [min(x), max(x)]
                ax.plot(xs, [slope * v + icpt for v in xs], "--", color="tab:red")
            r = results["correlations"][task][p]["pooled"]["pearson"]
            ax.set_title(f"{p}  r = {_f(r, 2)}", fontsize=9)
            ax.set_xlabel(p, fontsize=8)
        axes[0].set_ylabel(f"|realised Δ| ({results['config']['evaluation']['metric']})")
        fig.suptitle(f"forecast vs realised, {task} (seed means, ±SE)", fontsize=10)
        fig.tight_layout()
        paths[f"scatter_{task}"] = _save(fig, out / f"scatter_{task}.png")

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 0.35 * len(domains) + 1.8))
        a1.barh(domains, [table[d]["delta"] for d in domains], xerr=err, color="tab:gray")
        a1.set_title(f"realised Δ ({results['config']['evaluation']['metric']}), {task}")
        a2.barh(domains, [table[d]["act"] for d in domains], color="tab:blue")
        a2.set_title("forecast STS_act")
        for ax in (a1, a2):
            ax.invert_yaxis()
        fig.tight_layout()
        paths[f"bars_{task}"] = _save(fig, out / f"bars_{task}.png")

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for run in results["runs"]:
        hist = run["history"]
        steps = [h["step"] for h in hist]
        key = next(
            (k for k in (hist[0] if hist else {}) if k.startswith("sts/shift/overlap@")), None
        )
        label = f"{run['task']} s{run['seed']}"
        if key is not None:
            a1.plot(steps, [h[key] for h in hist], marker="o", label=label)
        a2.plot(steps, [h.get("sts/shift/total", math.nan) for h in hist], marker="o", label=label)
    a1.axhline(results["overlap_random"], ls=":", color="k", label="chance")
    a1.set(title=f"overlap@{results['k']}: ICL forecast vs realised", xlabel="step")
    a2.set(title="realised latent shift Σ_j Δ_real,j (training probe)", xlabel="step")
    a1.legend(fontsize=7)
    fig.tight_layout()
    paths["steps"] = _save(fig, out / "steps.png")
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _correlation_rows(results: dict[str, Any], task: str) -> list[list[str]]:
    rows = []
    for group, preds in results["predictors"].items():
        for p in preds:
            if p not in results["correlations"][task]:
                continue
            c = results["correlations"][task][p]
            pooled, seeds = c["pooled"], c["pearson_seeds"]
            part = results["partial"][task].get(p, {}).get("pearson", {})
            rows.append(
                [
                    p,
                    group,
                    f"{_f(pooled['pearson'])} [{_f(pooled['pearson_ci_low'], 2)}, "
                    f"{_f(pooled['pearson_ci_high'], 2)}]",
                    _f(pooled["pearson_p"], 2),
                    _f(pooled["spearman"]),
                    _f(pooled["kendall"]),
                    f"{_f(seeds['mean'])} ± {_f(seeds['std'], 2)}",
                    f"{_f(part.get('r'))} (p {_f(part.get('p'), 2)})" if part else "—",
                ]
            )
    return rows


Table = tuple[str, str, str, list[str], list[list]]


def _cross_task_tables(results: dict[str, Any]) -> list[Table]:
    note = (
        "log(score_A/score_B) vs log(|Δ_A|/|Δ_B|) per domain: per-domain constants cancel "
        "(a constant predictor such as base loss is undefined here)."
    )
    head = ["predictor", "Pearson", "p", "Spearman", "n"]
    tables = []
    for pair, preds in results["cross_task"].items():
        rows = [
            [p, _f(c["pearson"]), _f(c["pearson_p"], 2), _f(c["spearman"]), c["n"]]
            for p, c in preds.items()
        ]
        tables.append(
            ("cross_task/" + pair.replace(" ", "_"), f"Cross-task: {pair}", note, head, rows)
        )
    return tables


def _sign_overlap_table(results: dict[str, Any]) -> Table:
    k = results["k"]
    head = ["task", "sign accuracy (signed STS)", "majority baseline", "per seed"]
    head += [f"overlap@{k} ICL", f"overlap@{k} contrast", "chance"]
    rows = []
    for t, sign in results["sign"].items():
        overlap = results["overlap"][t]
        rows.append(
            [
                t,
                sign_text(sign["pooled"]["accuracy"]),
                _f(sign["pooled"]["majority"]),
                f"{_f(sign['seeds']['mean'])} ± {_f(sign['seeds']['std'], 2)}",
                f"{_f(overlap['icl']['mean'])} ± {_f(overlap['icl']['std'], 2)}",
                _f(overlap.get("contrast", {}).get("mean")),
                _f(results["overlap_random"]),
            ]
        )
    note = (
        "Sign: a positive signed STS predicts a lower loss. Overlap: shared members of the "
        f"forecast top-{k} and the top-{k} latents really shifted on the training probe."
    )
    return ("sign_overlap", "Sign and overlap", note, head, rows)


def _domain_tables(results: dict[str, Any]) -> list[Table]:
    tables = []
    for task, table in results["tables"].items():
        first = next(iter(table.values()))
        cols = [c for c in (*_FORECAST_COLUMNS, "post_shift_sae") if c in first]
        rows = [
            [
                d,
                _f(r["delta"]),
                _f(r["se"], 2),
                _f(r["delta_std"], 2),
                _f(r["base_loss"]),
                *[_f(r[c]) for c in cols],
            ]
            for d, r in table.items()
        ]
        head = ["domain", "Δ", "SE", "std over seeds", "base loss", *cols]
        tables.append((f"domains/{task}", f"Per-domain table: {task} (seed means)", "", head, rows))
    return tables


def _tables(results: dict[str, Any]) -> list[Table]:
    """Every report table as ``(key, title, note, head, rows)``: markdown and W&B share them."""
    head = ["predictor", "kind", "seed-mean Pearson [95% CI]", "p", "Spearman", "Kendall"]
    head += ["Pearson per seed", "partial r (base loss)"]
    correlations = [
        (
            f"correlations/{task}",
            f"Correlation with |realised Δ|: {task}",
            "",
            head,
            _correlation_rows(results, task),
        )
        for task in results["tasks"]
    ]
    timings = [[name, f"{v:.1f}"] for name, v in results["timings"].items()]
    return [
        *learning_table(results),
        *specificity_tables(results),
        *correlations,
        *measurement_tables(results),
        *_cross_task_tables(results),
        *([rank_agreement_table(results)] if results.get("rank_agreement") else []),
        _sign_overlap_table(results),
        *_domain_tables(results),
        *not_learned_table(results),
        ("timings", "Timings (seconds)", "", ["stage", "s"], timings),
    ]


def _markdown(results: dict[str, Any], figures: dict[str, Path]) -> str:
    cfg = results["config"]
    ft, ev = cfg["finetune"], cfg["evaluation"]
    lines = [
        "# STS crystal-ball experiment",
        *specificity_banner(results),
        *measurement_banner(results),
        *learning_banner(results),
        "",
        f"Model `{cfg['model']}`, SAE `{cfg['sae'] or 'shipped, or trained and cached'}` at layer "
        f"{cfg['predict']['layer']} (d_sae {results['d_sae']}, k = {results['k']}). "
        f"Source tasks: {', '.join(dict.fromkeys(r['task'] for r in results['runs']))}; "
        f"seeds {cfg['seeds']}; "
        f"{len(results['runs'][0]['realised'])} pre-registered domains. Fine-tuning: "
        f"{ft['method']}, {ft['steps']} steps × {ft['batch_size'] * ft.get('accumulate', 1)}, "
        f"lr {ft['lr']}{', LoRA' if ft['lora'] else ', full'}. Realised change: `{ev['metric']}` "
        f"on {ev['items_per_domain']} held-out items per domain ({ev['format']} text"
        f"{', options rotated' if ev.get('rotate_options') else ''}), paired by item.",
        "",
        f"Realised Δ = {METRIC_TEXT[ev['metric']]} (> 0: worse); correlations "
        "are with |Δ| (the paper predicts magnitude), over domains: seed-mean correlations "
        "(on the seed means of Δ and of each predictor, 95 % bootstrap CI of Pearson over "
        "domains) and per seed (mean ± std). Partial r controls for each domain's base loss.",
    ]
    for key, title, note, head, rows in _tables(results):
        if key == "timings":
            lines += ["", "## Figures", ""] + [f"![{k}]({p.name})" for k, p in figures.items()]
        lines += ["", f"## {title}", ""] + ([note, ""] if note else []) + _table(head, rows)
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out: str | os.PathLike, *, wandb: bool = True) -> Path:
    """Write ``results.json``, figures and ``report.md`` into ``out`` (and an offline W&B run)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = _clean(results)
    (out / "results.json").write_text(json.dumps(clean, indent=1) + "\n")
    figures = _figures(results, out)
    (out / "report.md").write_text(_markdown(clean, figures))
    if wandb:
        _log_wandb(clean, figures, out)
    return out / "report.md"


def _log_wandb(results: dict[str, Any], figures: dict[str, Path], out: Path) -> None:
    """The report's tables and figures as one W&B run of the experiment's group (through
    Lightning's logger; project, entity, mode, group and tags from the experiment's settings)."""
    from lightning.pytorch.loggers import WandbLogger

    from sts_lightning.experiment.config import wandb_logger_kwargs

    logger = WandbLogger(**wandb_logger_kwargs(results["config"], "report", str(out)))
    for key, _, _, head, rows in _tables(results):
        logger.log_table(key, columns=head, data=[[str(c) for c in row] for row in rows])
    logger.log_image("figures", images=[str(p) for p in figures.values()])
    logger.log_hyperparams(results["config"])
    logger.experiment.finish()

"""``sts-lightning predict --train_sets …``: compare candidate training sets before training.

Loads the model, SAE and domains once (:func:`~sts_lightning.forecast.job.load_inputs`), each
named set from its source, runs :func:`~sts_lightning.forecast.compare.predict_many` (domain
statistics once), ranks the sets when target or protected domains are named
(:func:`~sts_lightning.forecast.ranking.rank_sets`), and writes into ``output_dir``: the
comparison (``comparison.json`` / ``.safetensors``, ``sets/<i>/prediction.*``), ``ranking.json``,
``table.txt`` and ``chart.png`` (sets × domains with interval bars); with ``wandb`` also an
offline W&B run with the table and chart.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sts_lightning.data.prompts import Example
from sts_lightning.forecast.comparison import Comparison
from sts_lightning.forecast.job import PredictJobConfig, load_inputs
from sts_lightning.forecast.ranking import Ranking, rank_sets

__all__ = [
    "CompareResult",
    "check_set_names",
    "load_train_sets",
    "run_compare",
    "save_compare_chart",
]


@dataclass
class CompareResult:
    """What :func:`run_compare` computed and wrote."""

    comparison: Comparison
    """The per-set predictions and bootstrap parts."""
    ranking: Ranking | None
    """The ranking (``None`` when neither target nor protected domains were named)."""
    output_dir: Path
    """Where everything was written."""

    def table(self) -> str:
        """The ranking table, or each set's prediction table when there is no ranking."""
        if self.ranking is not None:
            return self.ranking.table()
        return "\n\n".join(f"== {n}\n{p.table()}" for n, p in self.comparison.predictions.items())


def check_set_names(argv: list[str]) -> None:
    """Reject a ``--train_sets`` JSON object naming a set twice (JSON keeps only the last).

    Raises:
        ValueError: The duplicated name.
    """
    values = [v for a, v in itertools.pairwise(argv) if a == "--train_sets"]
    values += [a.split("=", 1)[1] for a in argv if a.startswith("--train_sets=")]

    def unique(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"`train_sets` names the set {key!r} twice")
            seen.add(key)
        return dict(pairs)

    for value in values:
        try:
            json.loads(value, object_pairs_hook=unique)
        except json.JSONDecodeError:
            continue  # not JSON (YAML flow style): the parser reads and checks it


def load_train_sets(job: PredictJobConfig) -> dict[str, list[Example]]:
    """``{name: examples}`` of ``job.train_sets``; a source that cannot be read is named.

    Built-in sets draw ``job.train_examples`` pairs (seed ``job.predict.seed``); ``.jsonl``
    files and ``datasets`` sources are read whole, in every row format ``load_rows`` accepts.
    """
    from sts_lightning.data.domains import TRAINING_SETS
    from sts_lightning.data.sources import load_rows

    sets = {}
    for name, source in job.train_sets.items():
        size = job.train_examples if source in TRAINING_SETS else None
        try:
            rows = load_rows(source, size=size, seed=job.predict.seed, argument="train_sets")
            sets[name] = [Example(r["prompt"], r.get("answer")) for r in rows]
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ValueError(
                f"`train_sets[{name!r}]`={source!r} cannot be read as a training set: {err}"
            ) from err
    return sets


def run_compare(job: PredictJobConfig) -> CompareResult:
    """Load what the job names, compare its ``train_sets``, rank them, write every output."""
    from sts_lightning.forecast.compare import predict_many

    if not job.train_sets:
        raise ValueError("`train_sets` is empty: name at least one set to compare")
    sets = load_train_sets(job)  # before the model: a bad file fails fast
    model, tokenizer, sae, domains, timings = load_inputs(job)
    meta = {"model": job.model, "sae": job.sae or "trained (cached)", "job": asdict(job)}
    comparison = predict_many(
        model, tokenizer, sae, sets, domains, job.predict, n_candidates=job.n_candidates, meta=meta
    )
    ranking = None
    if job.target or job.protected:
        ranking = rank_sets(
            comparison,
            job.target,
            job.protected,
            mode=job.rank_mode,
            n_bootstrap=job.n_bootstrap,
            level=job.ci_level,
            separation=job.separation,
            seed=job.predict.seed,
        )
    t0 = timings.pop("start")
    comparison.timings |= timings | {"end_to_end": time.perf_counter() - t0}
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparison.save(out)
    result = CompareResult(comparison, ranking, out)
    _write(result, job)
    return result


def _write(result: CompareResult, job: PredictJobConfig) -> None:
    out, comparison = result.output_dir, result.comparison
    (out / "table.txt").write_text(result.table() + "\n")
    summary = {
        "sets": dict(job.train_sets),
        "ranking": None if result.ranking is None else result.ranking.to_dict(),
        "scores": {n: p.to_dict()["domains"] for n, p in comparison.predictions.items()},
        "timings": comparison.timings,
    }
    (out / "ranking.json").write_text(json.dumps(summary, indent=1) + "\n")
    chart = save_compare_chart(comparison, result.ranking, out / "chart.png", job.rank_mode)
    if job.wandb:
        _log_wandb(result, chart, job.rank_mode)


def _rows(comparison: Comparison, ranking: Ranking | None, mode: str) -> list[list]:
    """``[set, domain, STS, low, high]`` rows (intervals ``None`` without a ranking)."""
    rows = []
    for name, pred in comparison.predictions.items():
        for d, score in pred.domains.items():
            low = high = None
            if ranking is not None:
                _, low, high = ranking.domains[name][d]
            rows.append([name, d, getattr(score, mode), low, high])
    return rows


def save_compare_chart(
    comparison: Comparison, ranking: Ranking | None, path: Path, mode: str = "act"
) -> Path:
    """Grouped bars, sets × domains, with the bootstrap intervals as error bars (Agg PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, doms = comparison.names, comparison.domains
    fig, ax = plt.subplots(figsize=(min(20, max(6, 0.3 * len(doms) * len(names) + 2)), 4.5))
    width = 0.8 / len(names)
    rows = _rows(comparison, ranking, mode)
    for i, name in enumerate(names):
        mine = [r for r in rows if r[0] == name]
        values = [r[2] for r in mine]
        err = None
        if ranking is not None:  # asymmetric: (point - low, high - point)
            # A top-k point can sit just outside its percentile interval: no negative bar.
            err = [[max(r[2] - r[3], 0) for r in mine], [max(r[4] - r[2], 0) for r in mine]]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(doms))]
        ax.bar(xs, values, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(range(len(doms)), doms, rotation=30, ha="right")
    ax.set_ylabel(f"STS_{mode}")
    ax.set_title(
        "Candidate training sets"
        + (f" ({ranking.level:.0%} bootstrap intervals)" if ranking else "")
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _log_wandb(result: CompareResult, chart: Path, mode: str) -> None:
    """The comparison as one offline W&B run (through Lightning's logger)."""
    from lightning.pytorch.loggers import WandbLogger

    out = result.output_dir
    logger = WandbLogger(
        project="sts-lightning", name="predict-compare", save_dir=str(out), offline=True
    )
    head = ["set", "domain", f"sts_{mode}", "low", "high"]
    rows = _rows(result.comparison, result.ranking, mode)
    logger.log_table("compare/scores", columns=head, data=rows)
    if result.ranking is not None:
        r = result.ranking
        data = [[i + 1, n, *r.score[n]] for i, n in enumerate(r.order)]
        logger.log_table("compare/ranking", columns=["rank", "set", "R", "low", "high"], data=data)
    logger.log_image("compare/chart", images=[str(chart)])
    logger.experiment.finish()

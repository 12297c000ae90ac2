"""The ``sts-lightning`` command line: ``predict`` (forecast before training), ``experiment``
(forecast → fine-tune → realised deltas → report), ``fit``/``validate`` and ``demo``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch

from sts_lightning import functional as F
from sts_lightning.metric import TransferabilityCorrelation
from sts_lightning.stats import LatentMoments, PairedShift

log = logging.getLogger("sts_lightning")


def _demo(seed: int = 0, d_sae: int = 4096, n_domains: int = 8) -> str:
    """The STS core on synthetic sparse latents with a planted shift; returns a text report."""
    g = torch.Generator().manual_seed(seed)
    shifted_latents = torch.randperm(d_sae, generator=g)[:100]
    shift = PairedShift(d_sae)
    for _ in range(10):  # 10 batches of 1,000 token rows, never held together
        base = torch.relu(torch.randn(1000, d_sae, generator=g) - 2.0)
        icl = base.clone()
        icl[:, shifted_latents] += torch.rand(1000, 100, generator=g)
        shift.update(base, icl)
    top = F.top_shifted(shift.feature_shift().float(), k=100)
    lines = [f"planted latents recovered: {F.overlap_at_k(top, shifted_latents)}/100"]
    metric = TransferabilityCorrelation()
    for i in range(n_domains):
        usage = i / (n_domains - 1)  # how strongly this domain uses the shifted latents
        domain = LatentMoments(d_sae)
        feats = torch.relu(torch.randn(2000, d_sae, generator=g) - 2.0)
        feats[:, shifted_latents] += usage * torch.rand(2000, 100, generator=g)
        domain.update(feats)
        realised = usage + 0.1 * torch.randn((), generator=g, dtype=torch.float64)
        metric.update(domain.sts_act(top), realised)
        lines.append(f"domain_{i}: STS_act={domain.sts_act(top).item():8.3f}  |Δ|={realised:6.3f}")
    out = metric.compute()
    lines.append(
        f"pearson={out['pearson']:.3f} [{out['pearson_ci_low']:.3f}, {out['pearson_ci_high']:.3f}]"
        f" spearman={out['spearman']:.3f} kendall={out['kendall']:.3f} n={int(out['n'])}"
    )
    return "\n".join(lines)


def _predict(argv: list[str]) -> int:
    from sts_lightning.forecast.job import PredictJobConfig, job_parser, run_predict
    from sts_lightning.forecast.recipe import parse_dataclass, save_resolved

    parser = job_parser()
    job, namespace = parse_dataclass(parser, PredictJobConfig, argv)
    # The resolved recipe beside the results: the run can be repeated exactly.
    out = save_resolved(parser, namespace, job.output_dir)
    pred = run_predict(job)
    sys.stdout.write(pred.table() + "\n")
    t = pred.timings
    sys.stdout.write(
        f"wrote {out}/prediction.json, prediction.safetensors, table.txt, chart.png "
        f"(model {t['load_model']:.0f} s, SAE {t['sae']:.0f} s, forecast {t['total']:.0f} s, "
        f"end to end {t['end_to_end']:.0f} s)\n"
    )
    return 0


def _experiment(argv: list[str]) -> int:
    from sts_lightning.experiment.cli import experiment_parser
    from sts_lightning.experiment.config import ExperimentConfig
    from sts_lightning.experiment.run import run_experiment
    from sts_lightning.forecast.recipe import parse_dataclass, save_resolved

    parser = experiment_parser()
    job, namespace = parse_dataclass(parser, ExperimentConfig, argv)
    out = save_resolved(parser, namespace, job.output_dir)
    results = run_experiment(job)
    sys.stdout.write(
        f"wrote {out}/report.md, results.json and figures in {results['timings']['total']:.0f} s\n"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv[:1] == ["predict"]:
        return _predict(argv[1:])
    if argv[:1] == ["experiment"]:
        return _experiment(argv[1:])
    if argv[:1] in (["fit"], ["validate"]):
        from sts_lightning.training.cli import run  # lazy: Lightning's CLI imports take seconds

        return run(argv)
    parser = argparse.ArgumentParser(prog="sts-lightning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("predict", help="forecast before training (see `predict --help`)")
    sub.add_parser("experiment", help="forecast, fine-tune, measure, report (see --help)")
    sub.add_parser("fit", help="train from a recipe (see `fit --help`)")
    sub.add_parser("validate", help="validate from a recipe (see `validate --help`)")
    demo = sub.add_parser("demo", help="run the STS core on synthetic latents")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        sys.stdout.write(_demo(seed=args.seed) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

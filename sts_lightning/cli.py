"""The ``sts-lightning`` command line: ``predict`` (forecast before training), ``experiment``
(forecast → fine-tune → realised deltas → report), ``fit``/``validate``, ``recipes`` (list the
shipped recipes, copy one out) and ``demo``."""

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
    from sts_lightning.forecast.compare_job import check_set_names, run_compare
    from sts_lightning.forecast.job import PredictJobConfig, job_parser, run_predict
    from sts_lightning.forecast.recipe import parse_dataclass, save_resolved

    parser = job_parser()
    check_set_names(argv)
    job, namespace = parse_dataclass(parser, PredictJobConfig, argv)
    # The resolved recipe beside the results: the run can be repeated exactly.
    out = save_resolved(parser, namespace, job.output_dir)
    if job.train_sets:  # compare candidate training sets
        result = run_compare(job)
        sys.stdout.write(result.table() + "\n")
        sys.stdout.write(
            f"wrote {out}/ranking.json, comparison.json, table.txt, chart.png, sets/ "
            f"(end to end {result.comparison.timings['end_to_end']:.0f} s)\n"
        )
        return 0
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


def _recipes(argv: list[str]) -> int:
    from sts_lightning.forecast.recipe import copy_recipe, list_recipes

    parser = argparse.ArgumentParser(
        prog="sts-lightning recipes",
        description="List the recipes shipped with the package, or copy one out to edit it.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="name and summary of every shipped recipe")
    copy = sub.add_parser("copy", help="copy a shipped recipe out to edit it")
    copy.add_argument("name", help="a name from `sts-lightning recipes list`")
    copy.add_argument("dest", nargs="?", default=".", help="directory or file (default: .)")
    args = parser.parse_args(argv)
    if args.action == "list":
        for name, summary in list_recipes().items():
            sys.stdout.write(f"{name:32s} {summary}\n")
    else:
        sys.stdout.write(f"wrote {copy_recipe(args.name, args.dest)}\n")
    return 0


# What a user can get wrong at the command line: a bad value, a missing or broken file, an
# unknown name, a model that cannot be found. Anything else is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, KeyError, OSError)


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["predict"]:
        return _predict(argv[1:])
    if argv[:1] == ["experiment"]:
        return _experiment(argv[1:])
    if argv[:1] == ["recipes"]:
        return _recipes(argv[1:])
    if argv[:1] in (["fit"], ["validate"]):
        from sts_lightning.forecast.recipe import enable_field_docs
        from sts_lightning.training.cli import run  # lazy: Lightning's CLI imports take seconds

        enable_field_docs()
        return run(argv)
    parser = argparse.ArgumentParser(prog="sts-lightning", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("predict", help="forecast before training (see `predict --help`)")
    sub.add_parser("experiment", help="forecast, fine-tune, measure, report (see --help)")
    sub.add_parser("fit", help="train from a recipe (see `fit --help`)")
    sub.add_parser("validate", help="validate from a recipe (see `validate --help`)")
    sub.add_parser("recipes", help="list the shipped recipes or copy one out (see --help)")
    demo = sub.add_parser("demo", help="run the STS core on synthetic latents")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        sys.stdout.write(_demo(seed=args.seed) + "\n")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sts-lightning")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _message(err: BaseException) -> str:
    # KeyError's str() is the repr of its argument; the others read as written.
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sts-lightning``; returns the exit status.

    A user error (a bad value, a missing or broken file, an unknown name or model) is one
    ``error:`` line on stderr and exit status 2; ``--debug`` (anywhere) shows its traceback.

    Raises:
        SystemExit: Usage errors and ``--help`` / ``--version``, as argparse does (status 2 / 0).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    # One handler, on the package logger only: a root handler would print every line that
    # Lightning's own `lightning` handler prints a second time.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _dispatch(argv)
    except _USER_ERRORS as err:
        if debug:
            raise
        sys.stderr.write(f"error: {_message(err)} (--debug shows the traceback)\n")
        raise SystemExit(2) from None
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

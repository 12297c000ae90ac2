"""``sts-lightning predict``: the forecast before training, or the ranking of candidate sets."""

from __future__ import annotations

import sys

from sts_lightning.cli.parser import parse_job

__all__ = ["run"]


def run(argv: list[str]) -> int:
    """Run ``sts-lightning predict ARGS``; prints the table and what was written."""
    from sts_lightning.forecast.compare_job import check_set_names, run_compare
    from sts_lightning.forecast.job import PredictJobConfig, job_parser, run_predict

    check_set_names(argv)
    job, out = parse_job(job_parser(), PredictJobConfig, argv, "output_dir")
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

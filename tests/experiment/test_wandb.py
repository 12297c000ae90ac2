"""The experiment's W&B settings: every fine-tuning run and the report are runs of one group."""

from __future__ import annotations

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from sts_lightning.cli.experiment import load_experiment
from sts_lightning.experiment.config import ExperimentConfig
from sts_lightning.experiment.finetune import _loggers


def test_finetune_runs_are_wandb_runs_of_the_group(tmp_path):
    job = ExperimentConfig(
        output_dir=str(tmp_path / "my_experiment"),
        wandb_project="transfer",
        wandb_entity="lab",
        wandb_tags=["smollm2", "cpu"],
    )
    csv, wandb = _loggers(job, "arithmetic-seed1", tmp_path / "run")
    assert isinstance(csv, CSVLogger) and isinstance(wandb, WandbLogger)
    assert wandb._wandb_init | {"id": None} == {
        "name": "arithmetic-seed1",
        "project": "transfer",
        "entity": "lab",
        "group": "my_experiment",  # the output directory's name when no group is given
        "tags": ["smollm2", "cpu"],
        "dir": str(tmp_path / "run"),
        "id": None,
        "resume": "allow",
        "anonymous": None,
    }
    assert wandb._offline  # the default mode: nothing leaves the machine


def test_explicit_group_online_mode_and_off(tmp_path):
    job = ExperimentConfig(wandb_group="sweep-3", wandb_mode="online")
    _, wandb = _loggers(job, "family-seed0", tmp_path)
    assert wandb._wandb_init["group"] == "sweep-3" and not wandb._offline
    (only,) = _loggers(ExperimentConfig(wandb=False), "family-seed0", tmp_path)
    assert isinstance(only, CSVLogger)


@pytest.mark.parametrize(
    ("override", "field"),
    [(["--wandb_mode", "cloud"], "wandb_mode"), (["--wandb_project", " "], "wandb_project")],
)
def test_bad_wandb_settings_name_the_field(override, field, capsys):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "experiment_mmlu_smollm2.yaml"
    with pytest.raises((SystemExit, ValueError)) as err:
        load_experiment(recipe, *override)
    assert field in str(err.value) + capsys.readouterr().err


def test_offline_run_is_written_in_the_group(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    job = ExperimentConfig(output_dir=str(tmp_path / "exp"), wandb_tags=["t"])
    _, wandb = _loggers(job, "arithmetic-seed0", tmp_path / "run")
    run = wandb.experiment
    try:
        assert (run.group, run.name, list(run.tags)) == ("exp", "arithmetic-seed0", ["t"])
        wandb.log_metrics({"train/loss": 1.5}, step=0)
    finally:
        run.finish()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_report_run_joins_the_group(tmp_path, monkeypatch):
    import dataclasses

    import lightning.pytorch.loggers as loggers
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sts_lightning.experiment import report

    made = []

    class Spy(WandbLogger):
        def __init__(self, **kwargs):
            made.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(loggers, "WandbLogger", Spy)
    monkeypatch.setattr(report, "_tables", lambda results: [("corr", "T", None, ["r"], [[0.5]])])
    plt.plot([0, 1]), plt.savefig(tmp_path / "f.png"), plt.close()
    job = ExperimentConfig(output_dir=str(tmp_path), wandb_group="g", wandb_tags=["x"])
    report._log_wandb({"config": dataclasses.asdict(job)}, {"f": tmp_path / "f.png"}, tmp_path)
    (kwargs,) = made
    assert (kwargs["group"], kwargs["name"], kwargs["tags"]) == ("g", "report", ["x"])
    assert kwargs["offline"] and list((tmp_path / "wandb").glob("offline-run-*"))

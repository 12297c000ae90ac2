"""`sts-lightning experiment` end to end on a tiny model: every report artefact, numbers = JSON."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from scipy import stats as sps

from sts_lightning.cli import main
from sts_lightning.cli.experiment import load_experiment
from sts_lightning.experiment.summary import PREDICTORS

ROOT = Path(__file__).resolve().parents[2]

SUMS = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(6) for b in range(6)]
WORDS = [
    {"prompt": f"Spell {w} backwards.", "answer": w[::-1]}
    for w in [
        "cat",
        "dog",
        "sun",
        "tree",
        "leaf",
        "rain",
        "star",
        "moon",
        "fish",
        "bird",
        "lamp",
        "road",
        "ship",
        "wind",
        "rock",
        "sand",
    ]
]
ODD = [{"prompt": f"Is {n} odd?", "answer": "Yes" if n % 2 else "No"} for n in range(20)]
DOMAINS = {
    "law": [
        {"prompt": f"The court held that contract {i} was void.", "answer": f"Void, {i}."}
        for i in range(8)
    ],
    "code": [{"prompt": f"def f{i}(x):", "answer": f"    return x * {i}"} for i in range(8)],
    "bio": [{"prompt": f"Plants convert light {i}.", "answer": f"Energy {i}."} for i in range(8)],
    "maths": [{"prompt": f"Compute {i} * 3.", "answer": str(3 * i)} for i in range(8)],
}


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture
def recipe(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    tiny_sae.save_model(tmp_path / "sae")
    domains = {n: _jsonl(tmp_path / f"{n}.jsonl", rows) for n, rows in DOMAINS.items()}
    return [
        "--model",
        str(tmp_path / "model"),
        "--sae",
        str(tmp_path / "sae"),
        "--tasks",
        json.dumps(
            [_jsonl(tmp_path / "sums.jsonl", SUMS), _jsonl(tmp_path / "words.jsonl", WORDS)]
        ),
        "--contrast_task",
        _jsonl(tmp_path / "odd.jsonl", ODD),
        "--domains",
        "[]",
        "--domain_files",
        json.dumps(domains),
        "--seeds",
        "[0, 1]",
        "--predict.layer",
        "1",
        "--predict.k",
        "8",
        "--predict.n_demos",
        "1",
        "--predict.domain_demos",
        "1",
        "--predict.train_tokens",
        "60",
        "--predict.domain_tokens",
        "40",
        "--predict.max_norm",
        "1000",
        "--predict.progress",
        "false",
        "--raw_k",
        "8",
        "--finetune.steps",
        "3",
        "--finetune.batch_size",
        "4",
        "--finetune.lr",
        "0.01",
        "--finetune.warmup_steps",
        "0",
        "--finetune.track_every",
        "2",
        "--finetune.learned_margin",  # 3 steps do not teach a random model: analyse every run
        "null",
        "--evaluation.items_per_domain",
        "3",
        "--n_bootstrap",
        "50",
        "--output_dir",
        str(tmp_path / "out"),
    ]


@pytest.mark.slow
def test_experiment_writes_every_artefact_and_its_numbers_match_the_json(recipe, tmp_path):
    assert main(["experiment", *recipe]) == 0
    out = tmp_path / "out"
    for name in (
        "report.md",
        "results.json",
        "config.yaml",
        "steps.png",
        "scatter_sums.png",
        "bars_sums.png",
        "scatter_words.png",
    ):
        assert (out / name).is_file(), name
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")  # one offline W&B run
    keys = (b"correlations/sums", b"cross_task/sums_vs_words", b"sign_overlap", b"figures")
    deadline = time.monotonic() + 60  # W&B's writer process may still be flushing on a busy host
    while not all(k in run_file.read_bytes() for k in keys) and time.monotonic() < deadline:
        time.sleep(1)
    logged = run_file.read_bytes()
    for key in keys:
        assert key in logged, key
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"] == ["sums", "words"]
    assert len(results["runs"]) == 4
    report = (out / "report.md").read_text()
    for task, table in results["tables"].items():
        domains = list(table)
        assert domains == list(DOMAINS)
        # Seed means in the table are the means of the runs' values.
        runs = [r for r in results["runs"] if r["task"] == task]
        for d in domains:
            mean = sum(r["realised"][d]["delta"] for r in runs) / len(runs)
            assert math.isclose(table[d]["delta"], mean, rel_tol=1e-9, abs_tol=1e-12)
        # Every predictor's pooled correlation, recomputed from the table with scipy.
        delta = [abs(table[d]["delta"]) for d in domains]
        for p in PREDICTORS:
            if p not in table[domains[0]]:
                continue  # a predictor this recipe does not compute (first_order is off)
            x = [table[d][p] for d in domains]
            got = results["correlations"][task][p]["pooled"]
            if got["pearson"] is None:
                continue
            assert math.isclose(got["pearson"], sps.pearsonr(x, delta)[0], abs_tol=1e-9), p
            assert math.isclose(got["spearman"], sps.spearmanr(x, delta)[0], abs_tol=1e-9), p
        assert f"## Correlation with |realised Δ|: {task}" in report
        assert set(results["overlap"][task]) == {"icl", "contrast"}
    for section in ("Cross-task: sums vs words", "Sign and overlap", "Timings"):
        assert section in report
    for p in (
        "act",
        "icl",
        "notebook",
        "signed",
        "act_contrast",
        "raw_act",
        "repsim_sae",
        "base_loss",
        "post_shift_sae",
        "realised_sts",
    ):
        assert f"| {p} |" in report
    # Training curves from the STS callback: step 0 and the end, per run.
    for run in results["runs"]:
        assert [h["step"] for h in run["history"]][-1] == 3
    # Task learning: the pools' last quarter is held out (36 sums, 16 words), every run judged
    # on it; with no rule set, every run is analysed and the report says so.
    for run in results["runs"]:
        judged = run["task_learning"]
        assert judged["n_items"] == {"sums": 9, "words": 4}[run["task"]]
        assert judged["learned"] is None and math.isfinite(judged["answer_nll_delta"])
    assert "## Did fine-tuning learn each task?" in report and "No learned rule was set" in report
    # Answer-level realised change: per-item values that give the delta, secondary metrics.
    for run in results["runs"]:
        for row in run["realised"].values():
            assert row["metric"] == "choice_margin" and row["n_items"] == 3
            items = row["items"]
            change = sum(a - b for b, a in zip(items["base"], items["tuned"], strict=True))
            delta = change / sum(items["weight"])
            assert math.isclose(row["delta"], delta, rel_tol=1e-9, abs_tol=1e-12)
            margins = row["per_item"]["margin"]
            assert [-m for m in margins["base"]] == items["base"]
            for key in ("accuracy_base", "accuracy", "answer_nll_delta"):
                assert math.isfinite(row[key]), key
            # Fine-tuned passes score the answers only (`evaluation.item_nll` off): no tuned
            # item NLL; the base model's, which the base-loss control reads, is measured.
            item_nll = row["per_item"]["item_nll"]
            assert row["item_nll_delta"] is None and set(item_nll["tuned"]) == {None}
            assert all(math.isfinite(v) for v in item_nll["base"])
            assert row["n_tokens"] == sum(row["per_item"]["item_tokens"]) > 0
    # Seeds draw their own held-out items: the two seeds of a task differ in some domain.
    first, second = (r for r in results["runs"] if r["task"] == "sums")
    assert any(
        first["realised"][d]["items"]["base"] != second["realised"][d]["items"]["base"]
        for d in DOMAINS
    )

    _check_measurement(results, report)


def _check_measurement(results: dict, report: str) -> None:
    """Every reliability, ceiling and paired test, recomputed from results.json."""
    import numpy as np

    from sts_lightning.paired import williams_test
    from sts_lightning.reliability import spearman_brown, split_half_reliability

    assert "Pre-registered primary hypothesis" in report
    assert "cannot tell whether STS predicts" in report or "reaches its reliability" in report
    for task, m in results["measurement"].items():
        runs = [r for r in results["runs"] if r["task"] == task]
        domains = list(results["tables"][task])
        values, weights, labels, means = [], [], [], []
        for i, d in enumerate(domains):
            b, t, w = (np.concatenate([r["realised"][d]["items"][k] for r in runs])
                       for k in ("base", "tuned", "weight"))  # fmt: skip
            values += list((t - b) / w)
            weights += list(w)
            labels += [i] * len(w)
            means.append((t - b).sum() / w.sum())
        want = split_half_reliability(values, labels, weights=weights, transform=np.abs)
        got = m["realised"]["abs"]["reliability"]
        assert got is None or math.isclose(got, want["reliability"], abs_tol=1e-9)
        for p, rel in m["forecast"].items():
            if p == "base_loss" or rel is None:
                continue
            a, b = (np.array([np.mean([r["score_halves"][h][d][p] for r in runs])
                              for d in domains]) for h in ("a", "b"))  # fmt: skip
            assert math.isclose(rel, spearman_brown(np.corrcoef(a, b)[0, 1]), abs_tol=1e-9), p
        table, delta = results["tables"][task], np.abs(means)
        for mode, comparisons in m["tests"].items():
            for c in comparisons:
                x, y = (np.array([table[d][q] for d in domains]) for q in (mode, c["vs"]))
                r = np.corrcoef([delta, x, y])
                t, _ = williams_test(r[0, 1], r[0, 2], r[1, 2], len(domains))
                assert math.isclose(c["williams_t"], t, rel_tol=1e-9), (mode, c["vs"])
        assert f"## Reliability and noise ceilings: {task}" in report
        assert f"## Paired tests: {task}" in report


EXPERIMENT_RECIPES = sorted(ROOT.glob("recipes/experiment_*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENT_RECIPES, ids=lambda p: p.name)
def test_experiment_recipes_parse(path):
    job = load_experiment(path)
    assert len(job.tasks) >= 2 and len(job.seeds) >= 1
    assert len(job.domains) + len(job.domain_files) >= 8
    assert job.trust_remote_code is False
    assert job.contrast_task not in job.tasks


def test_there_are_three_experiment_scales():
    names = {p.name for p in EXPERIMENT_RECIPES}
    assert {"experiment_smollm2.yaml", "experiment_smollm2_full.yaml"} <= names
    assert any("llama3_8b" in n for n in names)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--contrast_task", "arithmetic"], "`contrast_task`='arithmetic' is a source task"),
        (["--domains", "[math, law]"], "at least 3 domains"),
        (["--seeds", "[1, 1, 2]"], "`seeds` must be distinct"),
        (["--raw_k", "0"], "`raw_k` must be a positive int"),
        (["--finetune.steps", "0"], "`steps` must be a positive int"),
        (["--finetune.method", "ppo"], "finetune.method"),
        (["--evaluation.items_per_domain", "0"], "`items_per_domain` must be a positive int"),
        (["--evaluation.metric", "accuracy"], "evaluation.metric"),
        (["--evaluation.format", "markdown"], "evaluation.format"),
        (["--evaluation.max_length", "8"], "`evaluation.max_length` must be >= 16"),
    ],
)
def test_experiment_rejects_bad_settings(override, message, capsys):
    # jsonargparse reports a failed instantiation on stderr and exits with status 2.
    with pytest.raises((ValueError, SystemExit)) as info:
        load_experiment(ROOT / "recipes/experiment_mmlu_smollm2.yaml", *override)
    assert message in str(info.value) + capsys.readouterr().err


def test_unknown_task_is_a_clear_error(tmp_path):
    from sts_lightning.experiment.config import ExperimentConfig
    from sts_lightning.experiment.run import _task_pool

    job = ExperimentConfig(tasks=["arithmetic", "family"])
    with pytest.raises(ValueError, match=r"missing\.jsonl' is not a built-in training set"):
        _task_pool(job, str(tmp_path / "missing.jsonl"))


@pytest.mark.slow
def test_experiment_grpo_variant_runs_and_reports(recipe, tmp_path):
    args = [*recipe, "--seeds", "[0]", "--finetune.method", "grpo", "--finetune.steps", "2"]
    args += ["--finetune.batch_size", "2", "--finetune.num_generations", "2"]
    args += ["--finetune.max_completion_length", "4", "--finetune.lr", "1e-3", "--wandb", "false"]
    args += ["--evaluation.rotate_options", "true"]  # letter preference averaged out
    assert main(["experiment", *args]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["finetune"]["method"] == "grpo"
    assert "options rotated" in (tmp_path / "out" / "report.md").read_text()
    assert [h["step"] for h in results["runs"][0]["history"]][-1] == 2
    assert not list((tmp_path / "out").glob("wandb"))  # W&B off when asked
    # A random tiny model earns equal rewards in a group (zero advantage), so the update may be
    # nil; the measurement must still be complete.
    for run in results["runs"]:
        assert all(math.isfinite(r["delta"]) for r in run["realised"].values())
        assert set(run["realised"]) == set(DOMAINS)


def test_progress_lines_give_each_stage_time_and_the_time_left(monkeypatch, capsys):
    import sts_lightning.experiment.run as run

    clock = iter([0.0, 10.0, 70.0, 100.0, 160.0, 200.0])  # start, then one reading per stage
    monkeypatch.setattr(run.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(run, "rss_mb", lambda: 1536.0)
    monkeypatch.setattr(run, "peak_rss_mb", lambda: 2560.0)
    stage = run._Stages(["load", "tune", "eval", "tune", "report"])
    for what, key in [("a", "load"), ("b", "tune"), ("c", "eval"), ("d", "tune"), ("e", "report")]:
        stage(what, key)
    lines = capsys.readouterr().err.splitlines()
    # Hand computation: after "c", one "tune" (60 s) and the unseen final "report" (0) remain.
    assert (
        lines[0] == "[1/5 00:10 | 00:10] a (RSS 1.5 GB, peak 2.5 GB)"
    )  # "tune" not yet seen: no estimate
    assert lines[2] == "[3/5 01:40 | 00:30, ~01:00 left] c (RSS 1.5 GB, peak 2.5 GB)"
    assert lines[3] == "[4/5 02:40 | 01:00, ~00:00 left] d (RSS 1.5 GB, peak 2.5 GB)"
    assert lines[4] == "[5/5 03:20 | 00:40, ~00:00 left] e (RSS 1.5 GB, peak 2.5 GB)"
    assert stage.timings == {"load": 10.0, "tune": 120.0, "eval": 30.0, "report": 40.0}
    assert run._clock(3725) == "1:02:05"


def test_report_tables_escape_pipes_inside_cells():
    import re

    from sts_lightning.experiment.report import _table

    lines = _table(["vector", "r with |Δ|"], [["realised |Δ|", 0.5]])
    # A markdown reader splits on unescaped pipes only: every line keeps two cells.
    assert [len(re.split(r"(?<!\\)\|", line)) - 2 for line in lines] == [2, 2, 2]
    assert lines[2] == "| realised \\|Δ\\| | 0.5 |"


def test_peak_rss_matches_the_kernels_high_water_mark():
    from sts_lightning.experiment.memory import peak_rss_mb, rss_mb

    # Oracle: the kernel's own high-water mark of this process (VmHWM, in kB).
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    assert abs(peak_rss_mb() - hwm / 1024) < 64  # the two readings are moments apart
    assert 0 < rss_mb() <= peak_rss_mb() + 1


def test_near_far_labels_and_panel_skills_are_checked_by_name():
    from sts_lightning.experiment.config import EvalConfig, ExperimentConfig

    panel = ["chain_sum", "products", "number_sorting", "knights_knaves"]
    kw = dict(tasks=["arithmetic", "family"], domains=panel)
    labels = {
        "near": {"arithmetic": ["chain_sum", "products"], "family": ["knights_knaves"]},
        "far": {"arithmetic": ["number_sorting"], "family": ["products"]},
    }
    job = ExperimentConfig(**kw, near_far=labels, evaluation=EvalConfig(metric="answer_nll"))
    assert job.labels().near["arithmetic"] == ("chain_sum", "products")
    with pytest.raises(ValueError, match=r"names unknown domains \['chain_summ'\]"):
        bad = {**labels, "near": {**labels["near"], "arithmetic": ["chain_summ"]}}
        ExperimentConfig(**kw, near_far=bad, evaluation=EvalConfig(metric="answer_nll"))
    with pytest.raises(ValueError, match=r"`near_far` labels \['syllogism'\]"):
        bad = {k: {**v, "syllogism": ["products"]} for k, v in labels.items()}
        ExperimentConfig(**kw, near_far=bad, evaluation=EvalConfig(metric="answer_nll"))
    with pytest.raises(ValueError, match=r"set `evaluation\.metric: answer_nll`"):
        ExperimentConfig(**kw)  # choice_margin: skills have no options


def test_skill_domains_are_measured_as_one_option_items_from_their_heldout_split():
    from sts_lightning.data.skills import load_skill
    from sts_lightning.experiment.heldout import skill_items

    items = skill_items("chain_sum", 6, seed=3)
    score = {e.prompt for e in load_skill("chain_sum", 50, "score", seed=3)}
    assert len(items) == 6 and all(i.options and len(i.options) == 1 for i in items)
    assert all(not i.listed and i.correct == 0 for i in items)
    assert not {i.question for i in items} & score  # never an item the forecast reads


@pytest.mark.slow
def test_first_order_control_and_early_stop_run_in_the_experiment(recipe, tmp_path):
    args = [*recipe, "--seeds", "[0]", "--wandb", "false", "--evaluation.metric", "answer_nll"]
    args += ["--first_order", json.dumps({"dim": 64, "domain_items": 4, "train_items": 8})]
    args += ["--finetune.learned_margin", json.dumps({"nll_drop": 0.0})]
    args += ["--finetune.stop_when_learned", "true", "--finetune.check_every", "1"]
    args += ["--finetune.stop_items", "4", "--finetune.task_steps", json.dumps({"sums": 2})]
    assert main(["experiment", *args]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for run in results["runs"]:
        assert run["step_budget"] == (2 if run["task"] == "sums" else 3)
        assert 1 <= run["steps"] <= run["step_budget"]
        assert [c[0] for c in run["stop_checks"]] == list(range(1, len(run["stop_checks"]) + 1))
        for row in run["scores"].values():
            assert row["first_order"] == pytest.approx(abs(row["first_order_signed"]))
        for half in run["score_halves"].values():
            assert all("first_order" in row for row in half.values())
    assert "first_order" in results["timings"]


def test_fine_tunes_run_without_the_base_model_and_in_the_recipes_micro_batches(
    recipe, tmp_path, monkeypatch
):
    """Every forecast is made before the first fine-tune, and the base model is let go then:
    no other model is alive when a fine-tune starts. ``finetune.micro_batch_size`` reaches the
    module (its batches run in parts)."""
    import gc

    from transformers import PreTrainedModel

    import sts_lightning.experiment.finetune as finetune_module
    from sts_lightning.training.sft import SFTModule

    alive, parts = [], []
    real_finetune, real_parts = finetune_module.finetune, SFTModule._micro_batched

    def finetune(*args, **kwargs):
        gc.collect()
        loaded = [o for o in gc.get_objects() if isinstance(o, PreTrainedModel)]
        alive.append(sum(o.name_or_path == str(tmp_path / "model") for o in loaded))
        return real_finetune(*args, **kwargs)

    def micro_batched(self, inputs, micro, batch_idx):
        parts.append(micro)
        return real_parts(self, inputs, micro, batch_idx)

    monkeypatch.setattr(finetune_module, "finetune", finetune)
    monkeypatch.setattr(SFTModule, "_micro_batched", micro_batched)
    args = [*recipe, "--seeds", "[0]", "--wandb", "false", "--finetune.micro_batch_size", "2"]
    assert main(["experiment", *args]) == 0
    # Two tasks, one seed: no copy of the experiment's model alive as either fine-tune starts
    # (the test session's own fixtures hold other models).
    assert alive == [0, 0]
    assert parts and set(parts) == {2}
    with pytest.raises(ValueError, match=r"`finetune\.micro_batch_size` must be a positive int"):
        from sts_lightning.experiment.config import FinetuneConfig

        FinetuneConfig(micro_batch_size=0)

"""`sts-lightning predict --train_sets …` on local tiny files: outputs equal the library call."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from sts_lightning.cli import main
from sts_lightning.data.sources import read_examples
from sts_lightning.forecast.comparison import Comparison
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.predict import predict
from tests.forecast.test_job import CODE, LAW, PROSE, TRAIN, _jsonl

MUL = [{"prompt": f"What is {a} * {b}?", "answer": str(a * b)} for a in range(4) for b in range(3)]
BUDGETS = {"k": 8, "domain_demos": 1, "train_tokens": 60, "domain_tokens": 20}


@pytest.fixture
def files(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    tiny_sae.save_model(tmp_path / "sae")
    rows = {"add": TRAIN, "mul": MUL, "law": LAW, "code": CODE, "prose": PROSE}
    paths = {k: _jsonl(tmp_path / f"{k}.jsonl", v) for k, v in rows.items()}
    return paths | {"model": str(tmp_path / "model"), "sae": str(tmp_path / "sae")}


def _args(files, out, sets, *extra):
    domains = {k: files[k] for k in ("law", "code", "prose")}
    args = ["predict", "--model", files["model"], "--sae", files["sae"], "--domains", "[]"]
    args += ["--domain_files", json.dumps(domains), "--output_dir", str(out)]
    args += ["--train_sets", json.dumps(sets) if isinstance(sets, dict) else sets]
    args += [f"--predict.{k}={v}" for k, v in BUDGETS.items()]
    return [*args, "--predict.progress", "false", "--predict.max_norm", "1e9", *extra]


def _main(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short domains, on purpose
        return main(args)


def _error(args, capsys) -> str:
    """The one ``error:`` line a user error prints (exit status 2)."""
    with pytest.raises(SystemExit) as err:
        _main(args)
    assert err.value.code == 2
    return " ".join(capsys.readouterr().err.split())


def test_cli_compare_writes_outputs_equal_to_library_calls(
    files, tmp_path, capsys, tiny_llama, tiny_tokenizer, tiny_sae
):
    out = tmp_path / "out"
    sets = {"add": files["add"], "mul": files["mul"]}
    extra = ["--target", "[law]", "--protected", "[code, prose]", "--n_bootstrap", "50"]
    assert _main(_args(files, out, sets, *extra, "--wandb", "true")) == 0
    printed = capsys.readouterr().out
    assert "rank" in printed and "+law" in printed and "-code" in printed and "add" in printed
    for name in ("ranking.json", "table.txt", "chart.png", "comparison.json", "config.yaml"):
        assert (out / name).stat().st_size > 0
    assert list((out / "wandb").rglob("*.wandb"))  # an offline W&B run
    saved = json.loads((out / "ranking.json").read_text())
    assert sorted(saved["ranking"]["order"]) == ["add", "mul"]
    assert saved["ranking"]["target"] == ["law"] and saved["ranking"]["n_bootstrap"] == 50
    comparison = Comparison.load(out)
    cfg = PredictConfig(**BUDGETS, max_norm=1e9, progress=False)
    domains = {k: read_examples(files[k]) for k in ("law", "code", "prose")}
    for name, path in sets.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = predict(
                tiny_llama, tiny_tokenizer, tiny_sae, read_examples(path), domains, cfg
            )
        got = comparison.predictions[name]
        assert torch.equal(got.shift, single.shift) and torch.equal(
            got.top_latents, single.top_latents
        )
        assert got.domains == single.domains


def test_cli_compare_without_roles_prints_each_set(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert _main(_args(files, out, {"add": files["add"], "mul": files["mul"]})) == 0
    printed = capsys.readouterr().out
    assert "== add" in printed and "== mul" in printed and "STS_act" in printed
    assert json.loads((out / "ranking.json").read_text())["ranking"] is None


def test_cli_rejects_a_set_named_twice(files, tmp_path, capsys):
    twice = json.dumps({"a": files["add"], "b": files["mul"]}).replace('"b"', '"a"')
    assert "`train_sets` names the set 'a' twice" in _error(_args(files, tmp_path, twice), capsys)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"`train_sets\['bad'\]`=.* cannot be read as a training set: .*no rows"),
        ("not json\n", r"`train_sets\['bad'\]`=.* cannot be read as a training set"),
        ('{"question": "x"}\n', r"`train_sets\['bad'\]`=.* cannot be read.*prompt"),
    ],
)
def test_cli_names_a_set_that_cannot_be_read(files, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    args = _args(files, tmp_path / "out", {"add": files["add"], "bad": str(bad)})
    assert re.search(message, _error(args, capsys))


def test_cli_names_a_set_too_small(files, tmp_path, capsys):
    small = _jsonl(tmp_path / "small.jsonl", TRAIN[:2])
    args = _args(files, tmp_path / "out", {"add": files["add"], "small": small})
    assert "`train_sets['small']` has 2 examples" in _error(args, capsys)


@pytest.mark.parametrize(
    "role, value, message",
    [
        ("--target", "[maths]", r"`target` names \['maths'\], not among the domains"),
        ("--protected", "[law, lawyers]", r"`protected` names \['lawyers'\]"),
    ],
)
def test_cli_names_an_unknown_target_or_protected_domain(
    files, tmp_path, capsys, role, value, message
):
    args = _args(files, tmp_path / "out", {"add": files["add"]}, role, value)
    assert re.search(message, _error(args, capsys))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"target": ["math"]}, "rank candidate `train_sets`"),
        ({"train_sets": {"a": "arithmetic"}, "train_file": "x.jsonl"}, "both given"),
        ({"train_sets": {"a": "arithmetic"}, "rank_mode": "signed"}, "`rank_mode` must be one of"),
        ({"train_sets": {"a": "arithmetic"}, "n_bootstrap": 0}, "`n_bootstrap` must be a positive"),
        ({"train_sets": {"a": "arithmetic"}, "ci_level": 1.0}, "`ci_level` and `separation`"),
    ],
)
def test_job_rejects_bad_compare_settings(fields, message):
    from sts_lightning.forecast.job import PredictJobConfig

    with pytest.raises(ValueError, match=message):
        PredictJobConfig(**fields)


def test_job_rejects_icl_ranking_without_domain_demos():
    from sts_lightning.forecast.job import PredictJobConfig

    cfg = PredictConfig(domain_demos=0)
    with pytest.raises(ValueError, match=r"needs `predict\.domain_demos` > 0"):
        PredictJobConfig(train_sets={"a": "arithmetic"}, rank_mode="icl", predict=cfg)


@pytest.mark.slow
def test_embedded_compare_recipe_runs_offline(tmp_path, capsys):
    """The compare recipe on the real SmolLM2 and its cached SAE, two sets, CPU-sized."""
    out = tmp_path / "compare"
    args = ["predict", "--config", "recipes/predict_compare_smollm2.yaml"]
    args += ["--output_dir", str(out), "--train_sets", '{"arith": "arithmetic", "kin": "family"}']
    args += ["--domains", "[math, law, code]", "--target", "[math]", "--protected", "[law, code]"]
    args += ["--n_bootstrap", "200", "--train_examples", "64", "--wandb", "false"]
    args += ["--predict.train_tokens", "200", "--predict.domain_tokens", "100"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--predict.progress", "false"]) == 0
    printed = capsys.readouterr().out
    assert "arith" in printed and "kin" in printed and "+math" in printed
    ranking = json.loads((out / "ranking.json").read_text())["ranking"]
    assert sorted(ranking["order"]) == ["arith", "kin"]
    assert all(low <= high for _, low, high in ranking["score"].values())
    assert 0 <= ranking["p_beats"]["arith"]["kin"] == 1 - ranking["p_beats"]["kin"]["arith"] <= 1
    assert (out / "chart.png").stat().st_size > 0 and (out / "sets" / "1").is_dir()


def test_chart_accepts_a_point_outside_its_interval(tmp_path):
    """A top-k point estimate can fall outside its bootstrap interval: the bar is clipped."""
    from sts_lightning.forecast.compare_job import save_compare_chart
    from sts_lightning.forecast.ranking import rank_sets
    from tests.forecast.test_ranking import _comparison

    comparison = _comparison(strength=0.3)
    ranking = rank_sets(comparison, ["math"], ["law"], n_bootstrap=50)
    name, domain = comparison.names[0], comparison.domains[0]
    point = ranking.domains[name][domain][0]
    ranking.domains[name][domain] = (point, point + 1.0, point + 2.0)
    path = save_compare_chart(comparison, ranking, tmp_path / "chart.png")
    assert path.stat().st_size > 0

"""`sts-lightning predict` end to end on local tiny files (offline), and on the real default."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from sts_lightning.cli import main
from sts_lightning.data.prompts import Example
from sts_lightning.data.sources import read_examples
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.forecast.predict import predict
from sts_lightning.forecast.prediction import Prediction

TRAIN = [
    {"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(3)
]
LAW = [
    {"prompt": t, "answer": "Void."}
    for t in [
        "The contract was void.",
        "The court held.",
        "The claim was dismissed.",
        "Consideration.",
    ]
]
CODE = [{"prompt": f"def f{i}(x):", "answer": f"    return x * {i}"} for i in range(4)]
PROSE = [{"prompt": t} for t in ["Plants convert light.", "Energy is stored.", "Leaves are green."]]


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture
def files(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    tiny_llama.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    tiny_sae.save_model(tmp_path / "sae")
    return {
        "model": str(tmp_path / "model"),
        "sae": str(tmp_path / "sae"),
        "train": _jsonl(tmp_path / "train.jsonl", TRAIN),
        "law": _jsonl(tmp_path / "law.jsonl", LAW),
        "code": _jsonl(tmp_path / "code.jsonl", CODE),
        "prose": _jsonl(tmp_path / "prose.jsonl", PROSE),
        "out": tmp_path / "out",
    }


def test_cli_predict_writes_outputs_equal_to_library_call(
    files, capsys, tiny_llama, tiny_tokenizer, tiny_sae
):
    domain_files = {k: files[k] for k in ("law", "code", "prose")}
    args = [
        "predict",
        "--model",
        files["model"],
        "--sae",
        files["sae"],
        "--train_file",
        files["train"],
        "--domains",
        "[]",
        "--domain_files",
        json.dumps(domain_files),
        "--output_dir",
        str(files["out"]),
        "--predict.k",
        "8",
        "--predict.domain_demos",
        "1",
        "--predict.train_tokens",
        "60",
        "--predict.domain_tokens",
        "20",
        "--predict.progress",
        "false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "law" in out and "STS_act" in out and "wrote" in out
    for name in (
        "prediction.json",
        "prediction.safetensors",
        "table.txt",
        "chart.png",
        "config.yaml",
    ):
        assert (files["out"] / name).stat().st_size > 0
    saved = Prediction.load(files["out"])
    # The same forecast through the library, from the same files.
    cfg = PredictConfig(k=8, domain_demos=1, train_tokens=60, domain_tokens=20, progress=False)
    domains = {k: read_examples(v) for k, v in domain_files.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = predict(
            tiny_llama, tiny_tokenizer, tiny_sae, read_examples(files["train"]), domains, cfg
        )
    assert torch.equal(saved.top_latents, direct.top_latents)
    for name in domains:
        assert saved.domains[name].act == pytest.approx(direct.domains[name].act, rel=1e-5)
    assert "--model" not in (files["out"] / "config.yaml").read_text()
    assert "predict:" in (files["out"] / "config.yaml").read_text()


def test_read_examples_rejects_malformed_lines(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"answer": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object with a 'prompt'"):
        read_examples(tmp_path / "bad.jsonl")
    assert read_examples(_jsonl(tmp_path / "ok.jsonl", PROSE))[0] == Example(PROSE[0]["prompt"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt": "ok"}\n\n{"prompt": \n', r"bad.jsonl:3: not a JSON object"),
        ('{"prompt": "ok"}\n["prompt"]\n', r"bad.jsonl:2: expected a JSON object, got list"),
    ],
)
def test_read_examples_names_the_bad_line(tmp_path, text, message):
    (tmp_path / "bad.jsonl").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_examples(tmp_path / "bad.jsonl")


def test_recipe_loads_like_the_command_line(tmp_path):
    """`load_job` and `sts-lightning predict` read a recipe through the same parser."""
    from sts_lightning.forecast.job import PredictJobConfig, job_parser, load_job
    from sts_lightning.forecast.recipe import parse_dataclass, save_resolved

    recipe = tmp_path / "r.yaml"
    recipe.write_text("domains: [law]\npredict:\n  k: 7\n")
    job = load_job(recipe, "--sae_tokens", "99")
    parser = job_parser()
    parsed, namespace = parse_dataclass(parser, PredictJobConfig, ["--config", str(recipe)])
    assert isinstance(job, PredictJobConfig) and job.domains == ["law"] and job.predict.k == 7
    assert job.sae_tokens == 99 and parsed.sae_tokens == PredictJobConfig().sae_tokens
    out = save_resolved(parser, namespace, tmp_path / "out")
    again = load_job(out / "config.yaml")  # the saved settings repeat the run
    assert again == parsed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--predict.bogus", "1"], "unrecognized arguments"),
        (["--predict.k", "zero"], "predict.k"),
    ],
)
def test_cli_rejects_bad_recipe_values(args, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(["predict", *args])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_unknown_recipe_key(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: embedded:smollm2\npredict:\n  kk: 3\n")
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(recipe)])
    assert "kk" in capsys.readouterr().err


def test_cli_offline_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(SystemExit) as err:
        main(
            [
                "predict",
                "--model",
                "no-such-org/no-such-model",
                "--output_dir",
                str(tmp_path),
                "--cache_dir",
                str(tmp_path / "cache"),
            ]
        )
    assert err.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: `model`=") and "not available offline" in line


@pytest.mark.slow
def test_embedded_default_predict_runs_offline(tmp_path, capsys):
    """The forecast on the real SmolLM2, CPU-sized: model rebuild (cached), a small SAE
    trained on its residual stream, a forecast over three built-in domains."""
    out = tmp_path / "pred"
    args = [
        "predict",
        "--config",
        "recipes/predict_arithmetic_smollm2.yaml",
        "--output_dir",
        str(out),
        "--sae_tokens",
        "20000",
        "--sae_training.training_tokens",
        "61440",
        "--sae_training.lr_decay_steps",
        "10",
        "--domains",
        "[math, law, code]",
        "--predict.train_tokens",
        "600",
        "--predict.domain_tokens",
        "300",
        "--predict.progress",
        "false",
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args) == 0
    pred = Prediction.load(out)
    assert set(pred.domains) == {"math", "law", "code"}
    assert pred.layer == 12 and pred.top_latents.shape == (100,)
    assert pred.quality["fvu"] < 0.6  # a real, if small, SAE
    assert all(s.n_tokens >= 300 and s.icl is not None for s in pred.domains.values())
    assert pred.train["n_tokens"] >= 600
    assert "math" in capsys.readouterr().out


# --- where predict runs: the `device` field ----------------------------------------------------


def _predict_args(files, *extra: str) -> list[str]:
    return [
        "predict",
        *("--model", files["model"], "--sae", files["sae"], "--train_file", files["train"]),
        *("--domains", "[]", "--domain_files", json.dumps({"law": files["law"]})),
        *("--output_dir", str(files["out"]), "--predict.k", "8", "--predict.domain_demos", "1"),
        *("--predict.train_tokens", "60", "--predict.domain_tokens", "20"),
        *extra,
    ]


def test_predict_on_cpu_matches_auto_here(files, capsys):
    from sts_lightning.forecast.job import PredictJobConfig, load_inputs

    model, _, sae, _, _ = load_inputs(PredictJobConfig(model=files["model"], sae=files["sae"]))
    assert {p.device.type for p in [*model.parameters(), *sae.parameters()]} == {"cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_predict_args(files, "--device", "cpu")) == 0
        on_cpu = Prediction.load(files["out"])
        if not torch.cuda.is_available():  # here `auto` is the CPU: the same forecast
            assert main(_predict_args(files, "--device", "auto")) == 0
            auto = Prediction.load(files["out"])
            assert torch.equal(auto.top_latents, on_cpu.top_latents)
            assert auto.domains["law"].act == on_cpu.domains["law"].act
    assert "device: cpu" in (files["out"] / "config.yaml").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_cuda_without_cuda_names_device_before_loading(files, capsys):
    missing_model = {**files, "model": str(files["out"] / "no_such_model")}
    with pytest.raises(SystemExit) as err:
        main(_predict_args(missing_model, "--device", "cuda"))
    assert err.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # the device, not the model, first
    assert line.startswith("error: `device`='cuda' but this machine has 0 CUDA device(s)")


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu0", "`device`='gpu0' is not a device"), ("cuda:7", "`device`='cuda:7' but")],
)
def test_bad_device_names_the_field(device, message):
    from sts_lightning.model.device import resolve_device

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ValueError, match=message):
        resolve_device(device)


def test_sae_training_runs_where_asked():
    from sts_lightning.model.sae_training import SAETrainConfig, train_sae

    rows = torch.randn(1200, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(d_sae=32, k=4, batch_size=50, training_tokens=500, n_eval_rows=100, eval_every=5)
    kw |= dict(lr_warm_up_steps=0, lr_decay_steps=0)
    on_cpu = train_sae(rows, cfg=SAETrainConfig(**kw, device="cpu"), d_in=16)
    assert on_cpu.W_enc.device.type == "cpu"
    if not torch.cuda.is_available():
        auto = train_sae(rows, cfg=SAETrainConfig(**kw, device="auto"), d_in=16)
        assert torch.equal(auto.W_enc, on_cpu.W_enc)  # `auto` is the CPU here: same seed, same SAE
        with pytest.raises(ValueError, match=r"`sae_training.device`='cuda' but"):
            train_sae(rows, cfg=SAETrainConfig(**kw, device="cuda"), d_in=16)

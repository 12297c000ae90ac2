"""Security: no remote code or pickles unless asked, safe YAML, isolated rewards, no secrets.

Code-reward basics (socket constructors raise, an infinite loop scores 0) are in
tests/training/test_rewards.py; here the low-level socket module, grandchildren and the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

import sts_lightning
from sts_lightning.training.code_execution import run_program

PACKAGE = [
    *Path(sts_lightning.__file__).parent.rglob("*.py"),
    *(Path(sts_lightning.__file__).parents[1] / "callbacks").rglob("*.py"),
]


# Width-32 models: one thread is fastest, and immune to a busy second core.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def marker(tmp_path):
    """A file a malicious payload would create; every test asserts it never appears."""
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "untrusted content was executed"


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# ----------------------------------------------------------------------------- remote code
def test_trust_remote_code_is_off_by_default():
    from sts_lightning.forecast.job import PredictJobConfig
    from sts_lightning.model.loading import load_model_and_tokenizer
    from sts_lightning.training.sft import SFTModule

    for fn in (load_model_and_tokenizer, SFTModule):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    assert {f.name: f.default for f in dataclasses.fields(PredictJobConfig)}[
        "trust_remote_code"
    ] is False


def test_grpo_module_never_asks_for_remote_code(monkeypatch, tiny_llama, tiny_tokenizer):
    from sts_lightning.training import grpo

    seen = {}

    def spy(name, **kwargs):
        seen.update(kwargs)
        return tiny_llama, tiny_tokenizer

    monkeypatch.setattr(grpo, "load_model_and_tokenizer", spy)
    module = grpo.GRPOModule(
        "some/checkpoint", reward_funcs=["sts_lightning.training.rewards.format_reward"]
    )
    module.configure_model()  # weights load lazily (FSDP-ready): this is where it asks
    assert seen and not seen.get("trust_remote_code", False)  # the loader's default is off


def test_checkpoint_with_custom_code_is_refused(tmp_path, marker):
    from sts_lightning.model.loading import load_model_and_tokenizer

    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = {"model_type": "evil", "auto_map": {"AutoConfig": "modeling_evil.EvilConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model_and_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- pickles
def test_package_never_unpickles():
    offenders = []
    for path in PACKAGE:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(pickle|dill|joblib|cloudpickle)\b|\.load_from_checkpoint\(", line):
                offenders.append(f"{path.name}:{i}: {line.strip()}")
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert offenders == []


def test_malicious_pickle_in_our_files_is_refused(tmp_path, marker):
    from sts_lightning.forecast.prediction import Prediction
    from sts_lightning.model.sae import load_sae
    from sts_lightning.monitor.tracker import load_tracker_state
    from sts_lightning.stats import PairedShift

    payload = {"shift": _Evil(marker)}
    for name in ("prediction.safetensors", "tracker.safetensors", "sae_weights.safetensors"):
        torch.save(payload, tmp_path / name)
    (tmp_path / "prediction.json").write_text("{}")
    (tmp_path / "tracker.json").write_text("{}")
    (tmp_path / "cfg.json").write_text('{"d_in": 32, "d_sae": 64, "architecture": "standard"}')
    for load in (Prediction.load, load_tracker_state, load_sae):
        with pytest.raises(ValueError):
            load(tmp_path)
    with pytest.raises(ValueError, match="`path`"):
        PairedShift.load(tmp_path / "prediction.safetensors")


def test_malicious_checkpoint_is_refused_with_weights_only(tmp_path, marker, tiny_llama):
    import pickle

    from lightning.pytorch import Trainer

    from tests.callbacks.test_sts import TEXTS, UserModule, _loader

    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Evil(marker)}, ckpt)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    trainer = Trainer(max_steps=1, logger=False, enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(pickle.UnpicklingError):
        trainer.fit(UserModule(tiny_llama, None), [], ckpt_path=ckpt, weights_only=True)
    assert TEXTS and _loader  # the helpers the callback checkpoints below come from


def test_sts_checkpoints_load_with_weights_only(tmp_path, tiny_llama, tiny_tokenizer, tiny_sae):
    from tests.callbacks.test_sts import _callback, _fit

    callback = _callback(tiny_sae, every=2)
    trainer, _ = _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=2)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    state = torch.load(tmp_path / "run.ckpt", weights_only=True)  # no pickle needed to resume
    (sts_state,) = [v for k, v in state["callbacks"].items() if k.startswith("STSCallback")]
    assert torch.equal(sts_state["probe"]["rows"], callback.tracker.probe["rows"])


# ----------------------------------------------------------------------------- YAML
def test_package_uses_safe_yaml_only():
    pattern = re.compile(r"yaml\.(load|unsafe_load|full_load)\(|Loader=yaml\.(Unsafe|Full)?Loader")
    offenders = [
        f"{p.name}: {m.group(0)}" for p in PACKAGE for m in pattern.finditer(p.read_text())
    ]
    assert offenders == []


def test_recipe_with_python_tag_is_refused(tmp_path, marker, capsys):
    from sts_lightning.forecast.job import load_job

    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SystemExit):
        load_job(recipe)
    assert "could not determine a constructor" in capsys.readouterr().err


# ----------------------------------------------------------------------------- code rewards
def test_low_level_sockets_are_disabled_too():
    assert run_program("import _socket\ntry:\n    _socket.socket()\nexcept OSError:\n    pass")
    assert not run_program("import _socket; _socket.socket().close()")
    assert not run_program("import socket; socket.SocketType().close()")
    assert not run_program("import socket; socket.getaddrinfo('example.com', 80)")


def test_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    program = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "while True:\n    pass\n"
    )
    start = time.monotonic()
    assert run_program(program, timeout=1.5) is False
    assert time.monotonic() - start < 10
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    time.sleep(0.2)
    # The grandchild went with its group: gone, or a zombie waiting for init to reap it.
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_reward_code_sees_no_secrets(monkeypatch):
    wandb = pytest.importorskip("wandb")
    if wandb.run is not None:  # an unfinished run of an earlier test would be reused, elsewhere
        wandb.finish()
    monkeypatch.setenv("WANDB_API_KEY", "secret-xyz")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    program = "import os\nassert not {'WANDB_API_KEY', 'HF_TOKEN'} & set(os.environ)\n"
    assert run_program(program)


# ----------------------------------------------------------------------------- secrets
def test_no_secret_in_any_written_file(tmp_path, monkeypatch, tiny_llama, tiny_tokenizer, tiny_sae):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from tests.callbacks.test_sts import _callback, _fit

    wandb = pytest.importorskip("wandb")
    if wandb.run is not None:  # an unfinished run of an earlier test would be reused, elsewhere
        wandb.finish()
    monkeypatch.setenv("WANDB_API_KEY", "secret-xyz")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    loggers = [
        WandbLogger(save_dir=str(tmp_path), mode="offline", project="sts-secret"),
        CSVLogger(tmp_path),
    ]
    callback = _callback(tiny_sae, every=2)
    trainer, _ = _fit(tmp_path, tiny_llama, tiny_tokenizer, callback, max_steps=2, logger=loggers)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    loggers[0].experiment.finish()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = sorted(str(p.relative_to(tmp_path)) for p in files)
    assert any(p.suffix == ".wandb" for p in files), names  # the W&B run was written
    assert any(p.suffix == ".png" for p in files), names  # and the callback's plots
    leaked = [str(p) for p in files if b"secret-xyz" in p.read_bytes()]
    assert leaked == []


def test_cli_resumes_with_weights_only_unless_told_otherwise(monkeypatch, tmp_path):
    from lightning.pytorch import Trainer

    from sts_lightning.cli.fit import run

    seen = []

    @functools.wraps(Trainer.fit)  # the CLI reads its arguments from this signature
    def fit(self, *args, **kwargs):
        seen.append(kwargs["weights_only"])

    monkeypatch.setattr(Trainer, "fit", fit)
    monkeypatch.chdir(tmp_path)  # the recipe writes under runs/
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "sft_arithmetic_smollm2.yaml")
    common = ["--config", recipe, "--trainer.logger=false"]
    run(["fit", *common])
    run(["fit", *common, "--weights_only", "false"])
    assert seen == [True, False]

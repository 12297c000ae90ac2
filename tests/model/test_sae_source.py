"""The SAE's training rows and which SAE a run reads (model/sae_source.py)."""

from __future__ import annotations

import pytest
import torch

from sts_lightning.data.domains import DOMAINS, load_domain, load_training_set
from sts_lightning.data.prompts import Example
from sts_lightning.model import sae_source as sae_data
from sts_lightning.model.sae_source import SAESourceConfig, resolve_sae
from sts_lightning.model.sae_training import SAETrainConfig

EXAMPLES = [Example(f"What is {a} + {b}?", str(a + b)) for a in range(5) for b in range(4)]


def _collect(monkeypatch, tiny_tokenizer, batches, **kwargs):
    """``collect_activations`` over fixed activation batches instead of a model's."""
    monkeypatch.setattr(sae_data, "iter_span_activations", lambda *a, **k: iter(batches))
    kwargs = {"layer": 0, "n_tokens": 10_000, **kwargs}
    return sae_data.collect_activations(None, tiny_tokenizer, EXAMPLES, **kwargs)


def _batches(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        batch = torch.randn(40, 8, generator=gen)
        batch[::9] *= 50  # a few massive rows in every batch
        out.append(batch)
    return out


def test_finite_rows_kept_by_the_first_batch_median_rule(monkeypatch, tiny_tokenizer):
    batches = _batches()
    threshold = float(torch.linalg.vector_norm(batches[0], dim=-1).median()) * 10.0
    expected = torch.cat([b[torch.linalg.vector_norm(b, dim=-1) <= threshold] for b in batches])
    rows = _collect(monkeypatch, tiny_tokenizer, batches, outlier_factor=10.0)
    assert 0 < rows.shape[0] < 120 and torch.equal(rows, expected)
    given = _collect(monkeypatch, tiny_tokenizer, batches, max_norm=2.0)
    assert torch.equal(given, torch.cat([b[b.norm(dim=-1) <= 2.0] for b in batches]))


def test_a_nan_row_in_the_first_batch_does_not_drop_every_row(monkeypatch, tiny_tokenizer):
    batches = _batches()
    batches[0][3, 0] = float("nan")  # a median over all norms would be NaN: every row dropped
    norms = torch.linalg.vector_norm(batches[0], dim=-1)
    threshold = float(norms[torch.isfinite(norms)].median()) * 10.0
    expected = torch.cat([b[torch.linalg.vector_norm(b, dim=-1) <= threshold] for b in batches])
    rows = _collect(monkeypatch, tiny_tokenizer, batches)
    assert rows.shape[0] > 100 and torch.isfinite(rows).all()
    assert torch.equal(rows, expected)


def test_the_budget_caps_the_rows(monkeypatch, tiny_tokenizer):
    rows = _collect(monkeypatch, tiny_tokenizer, _batches(), n_tokens=50)
    assert rows.shape == (50, 8)


def test_default_mix_keeps_its_cache_key():
    """The key of the default mix is the one SAEs were cached under before it was configurable."""
    source = SAESourceConfig(tokens=100_000)
    key = source.cache_key("embedded:smollm2", 12, 500.0, 10.0)
    assert key == "embedded:smollm2/L12/mixed-v1/100000/maxnorm500.0/x10.0"
    assert SAESourceConfig(mix_domains=list(DOMAINS)).mix_tag() == "mixed-v1"
    other = {
        SAESourceConfig(mix_seed=1).mix_tag(),
        SAESourceConfig(mix_task_examples=10).mix_tag(),
        SAESourceConfig(mix_tasks=["arithmetic"]).mix_tag(),
        SAESourceConfig(mix_domains=["math"]).mix_tag(),
    }
    assert len(other) == 4 and "mixed-v1" not in other


def test_mix_is_the_domains_then_the_three_tasks():
    texts = SAESourceConfig(mix_domains=["law"], mix_task_examples=3).mix_texts()
    law = load_domain("law", split="score")
    tasks = [
        e for t in ("arithmetic", "family", "syllogism") for e in load_training_set(t, 3, 1234)
    ]
    assert texts == law + tasks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tokens": 0}, "`tokens` must be a positive int"),
        ({"mix_tasks": ["chess"]}, "`mix_tasks` must be one of"),
        ({"mix_domains": ["astrology"]}, "`mix_domains` must be one of"),
    ],
)
def test_source_config_checks_its_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAESourceConfig(**kwargs)


def test_named_sae_is_loaded_and_training_needs_a_layer(tmp_path, tiny_sae, tiny_llama):
    tiny_sae.save_model(tmp_path / "sae")
    sae = resolve_sae(SAESourceConfig(sae=str(tmp_path / "sae")), "m", tiny_llama, None, layer=None)
    assert torch.equal(sae.W_dec, tiny_sae.W_dec)
    with pytest.raises(ValueError, match=r"`predict\.layer` must be set"):
        resolve_sae(SAESourceConfig(), "m", tiny_llama, None, layer=None)


def test_trained_sae_is_cached_under_its_key(tmp_path, monkeypatch, tiny_llama, tiny_tokenizer):
    training = SAETrainConfig(
        d_sae=64, k=4, batch_size=32, training_tokens=32 * 20, lr_warm_up_steps=2,
        lr_decay_steps=5, dead_feature_window=10, n_eval_rows=32, eval_every=100,
    )  # fmt: skip
    source = SAESourceConfig(training=training, tokens=400, mix_domains=["law"])
    kwargs = {"layer": 1, "max_norm": None, "outlier_factor": 10.0, "cache_dir": tmp_path}
    first = resolve_sae(source, "tiny", tiny_llama, tiny_tokenizer, **kwargs)
    assert first.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert len(list((tmp_path / "sae").iterdir())) == 1

    def no_rows(*args, **kwargs):
        raise AssertionError("a cache hit must not collect activations")

    monkeypatch.setattr(sae_data, "collect_activations", no_rows)
    again = resolve_sae(source, "tiny", tiny_llama, tiny_tokenizer, **kwargs)
    assert torch.equal(again.W_dec, first.W_dec)

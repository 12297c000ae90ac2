"""One massive-activation rule at every entry point: a NaN row is dropped and counted, never
averaged in, and never poisons the threshold (which comes from finite rows only).

Each entry point runs on a model whose layer-L output is NaN from position 3 on in the first
sequence of every batch (a forward hook), so the first batch also has finite rows. The oracle:
the same positions set to a huge *finite* value, with a fixed ``max_norm`` that drops them, must
give exactly the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch

from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.model.capture import decoder_layers

LAYER = 1
TRAIN = [Example(f"What is {a} + {b}?", f"{a + b}") for a in range(6) for b in range(4)]
DOMAINS = {
    "law": [Example(f"The statute {i} was repealed by the court.") for i in range(6)],
    "code": [Example(f"def f{i}(x):\n    return x * {i}") for i in range(6)],
    "bio": [Example(f"Cell {i} converts light energy into chemical energy.") for i in range(6)],
}
CFG = PredictConfig(
    layer=LAYER, k=8, n_demos=1, domain_demos=1, train_tokens=80, domain_tokens=40, progress=False
)


@contextlib.contextmanager
def poisoned(model, value: float, sequences=slice(0, 1), positions=slice(3, None)):
    """Set the layer-L residual of ``sequences`` × ``positions`` of every batch to ``value``."""

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[sequences, positions, :] = value
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = decoder_layers(model)[LAYER].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def test_predict(tiny_llama, tiny_tokenizer, tiny_sae):
    from sts_lightning.forecast.predict import predict

    with poisoned(tiny_llama, float("nan")):
        pred = predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, CFG)
    assert math.isfinite(pred.max_norm) and pred.train["n_dropped"] > 0
    assert pred.train["n_tokens"] > 0 and all(d.n_dropped > 0 for d in pred.domains.values())
    assert _finite(s for d in pred.domains.values() for s in (d.act, d.icl, d.signed))

    fixed = dataclasses.replace(CFG, max_norm=1e4)
    with poisoned(tiny_llama, float("nan")):
        nan = predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, fixed)
    with poisoned(tiny_llama, 1e6):
        huge = predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, fixed)
    assert nan.train == huge.train
    assert torch.equal(nan.shift, huge.shift)
    assert {n: d.act for n, d in nan.domains.items()} == {n: d.act for n, d in huge.domains.items()}


def test_tracker(tiny_llama, tiny_tokenizer, tiny_sae):
    from sts_lightning.monitor.tracker import STSTracker

    with poisoned(tiny_llama, float("nan")):
        tracker = STSTracker(tiny_sae, TRAIN, DOMAINS, DOMAINS, CFG)
        start = tracker.start(tiny_llama, tiny_tokenizer)
        metrics, _ = tracker.measure(tiny_llama, tiny_tokenizer, step=1)
    keep = tracker.probe["keep"]
    assert 0 < int(keep.sum()) < keep.numel()  # the NaN rows are out, the others in
    assert torch.isfinite(tracker.probe["rows"]).all()
    assert _finite(start.values()) and metrics["sts/shift/total"] == 0.0  # same weights
    # Spearman of two all-zero shifts is undefined (NaN, as documented), and the held-out loss
    # of a model that outputs NaN is NaN; every statistic of latent rows is finite.
    shift = {k: v for k, v in metrics.items() if k.startswith(("sts/shift/", "sts/realised/"))}
    assert _finite(v for k, v in shift.items() if "spearman" not in k)


def test_experiment_forecaster(tiny_llama, tiny_tokenizer, tiny_sae):
    from sts_lightning.experiment.forecast import Forecaster, score_domains

    with poisoned(tiny_llama, float("nan")):
        forecaster = Forecaster(tiny_llama, tiny_tokenizer, tiny_sae, LAYER, CFG)
        domains = forecaster.domains(DOMAINS, seed=0)
        task = forecaster.task(TRAIN, seed=0, contrast_pool=TRAIN[::-1])
    assert math.isfinite(forecaster.max_norm)
    assert all(d.counts["n_dropped"] > 0 for d in domains.values())
    scores = score_domains(domains, task, k=8, raw_k=8)
    assert _finite(v for row in scores.values() for v in row.values())


def test_sae_data(tiny_llama, tiny_tokenizer):
    from sts_lightning.model.sae_source import collect_activations

    texts = [e for ex in DOMAINS.values() for e in ex] + TRAIN
    with poisoned(tiny_llama, float("nan")):
        rows = collect_activations(tiny_llama, tiny_tokenizer, texts, layer=LAYER, n_tokens=200)
    with torch.no_grad():
        clean = collect_activations(tiny_llama, tiny_tokenizer, texts, layer=LAYER, n_tokens=200)
    # Before the shared rule, a NaN in the first batch made the threshold NaN: no row was kept.
    assert rows.shape[0] > 0 and torch.isfinite(rows).all()
    assert 0.9 * clean.shape[0] <= rows.shape[0] <= 200  # only the poisoned rows are missing


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_all_rows_non_finite_is_a_clear_error(tiny_llama, tiny_tokenizer, tiny_sae, value):
    from sts_lightning.forecast.predict import predict

    everything = poisoned(tiny_llama, value, sequences=slice(None), positions=slice(None))
    with everything, pytest.raises(ValueError, match="non-finite"):
        predict(tiny_llama, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, CFG)

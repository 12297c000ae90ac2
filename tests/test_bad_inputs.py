"""Bad inputs across the public API, the recipes and the files we read back.

Each must fail with an exception type and a message that names the argument (and what was
expected), or give a documented warning: never a bare error from deep inside torch or a library,
never a silently wrong number. Bad inputs already covered elsewhere (tests/test_functional.py,
test_stats.py, test_metric.py, forecast/test_predict.py, data/test_prompts.py, model/test_sae.py,
forecast/test_job.py, cli/test_fit.py, training/test_rewards.py, training/test_grpo.py,
callbacks/test_sts.py) are not repeated here; see docs/reliability.md.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sts_lightning import functional as F
from sts_lightning.data.prompts import Example
from sts_lightning.forecast.config import PredictConfig
from sts_lightning.metric import TransferabilityCorrelation
from sts_lightning.model.sae_training import SAETrainConfig
from sts_lightning.monitor.evaluation import encode_eval_set
from sts_lightning.monitor.tracker import TrackerConfig
from sts_lightning.stats import LatentMoments, PairedShift
from sts_lightning.training.code_execution import make_code_reward
from sts_lightning.training.grpo_loss import GRPOConfig

TRAIN = [Example(f"What is {i} + 1?", f"The answer is {i + 1}.") for i in range(8)]
DOMAINS = {
    "law": [Example(f"The court held that contract {i} was void.") for i in range(6)],
    "bio": [Example(f"Photosynthesis converts light in plants {i}.") for i in range(6)],
}
TINY = PredictConfig(k=4, domain_demos=0, train_tokens=30, domain_tokens=30, progress=False)


def _moments() -> LatentMoments:
    m = LatentMoments(3)
    m.update(torch.ones(2, 3))
    return m


# (id, call, exception, message that must name the argument / expected value)
PURE = [
    ("rows-not-tensor", lambda: F.feature_shift([[1.0]], [[1.0]]), TypeError, "`base`.*Tensor"),
    (
        "complex-dtype",
        lambda: F.sts_act(torch.ones(2, 3, dtype=torch.cfloat), [0]),
        TypeError,
        "`features` must be a floating",
    ),
    ("3d-rows", lambda: F.sts_act(torch.ones(2, 3, 4), [0]), ValueError, r"\(n_tokens, d_sae\)"),
    (
        "2d-latents",
        lambda: F.sts_act(torch.ones(2, 3), torch.tensor([[0]])),
        ValueError,
        "`latents` must be a non-empty 1-D",
    ),
    (
        "nan-shift-topk",
        lambda: F.top_shifted(torch.tensor([1.0, float("nan")]), 1),
        ValueError,
        "`shift` contains NaN",
    ),
    ("bool-k", lambda: F.top_shifted(torch.ones(4), k=True), ValueError, r"`k` must be an int"),
    (
        "nan-signed-shift",
        lambda: F.sts_signed(torch.ones(2, 3), torch.tensor([1.0, 0, 0]) / 0, [0]),
        ValueError,
        "`shift` must be a finite",
    ),
    (
        "stream-nan-signed-shift",
        lambda: _moments().sts_signed(torch.tensor([float("nan"), 1.0, 1.0]), [0, 1]),
        ValueError,
        "`shift` must be a finite floating",
    ),
    (
        "stream-int-signed-shift",
        lambda: _moments().sts_signed(torch.tensor([1, 1, 1]), [0]),
        ValueError,
        "`shift` must be a finite floating",
    ),
    ("stream-bool-d_sae", lambda: PairedShift(True), ValueError, "`d_sae` must be a positive int"),
    (
        "stream-list-rows",
        lambda: LatentMoments(3).update([[1.0, 2.0, 3.0]]),
        TypeError,
        "`features` must be a floating tensor",
    ),
    (
        "metric-no-updates",
        lambda: TransferabilityCorrelation().compute(),
        ValueError,
        "at least 3 domains.*n=0",
    ),
    (
        "metric-strings",
        lambda: TransferabilityCorrelation().update(["a"], ["b"]),
        TypeError,
        "`predicted` must be a real-valued",
    ),
    (
        "metric-inf-realised",
        lambda: TransferabilityCorrelation().update(
            torch.ones(3), torch.tensor([1, 2, float("inf")])
        ),
        ValueError,
        "`realised` contains NaN or inf",
    ),
    (
        "metric-bool-bootstrap",
        lambda: TransferabilityCorrelation(n_bootstrap=True),
        ValueError,
        "`n_bootstrap` must be a positive int",
    ),
    ("zero-domain-budget", lambda: PredictConfig(domain_tokens=0), ValueError, "`domain_tokens`"),
    ("negative-batch", lambda: PredictConfig(batch_size=-1), ValueError, "`batch_size`"),
    ("outlier-factor-1", lambda: PredictConfig(outlier_factor=1.0), ValueError, "outlier_factor"),
    ("zero-probe-budget", lambda: TrackerConfig(probe_tokens=0), ValueError, "`probe_tokens`"),
    ("negative-eval-budget", lambda: TrackerConfig(eval_tokens=-5), ValueError, "`eval_tokens`"),
    ("negative-alarm", lambda: TrackerConfig(alarm_threshold=-1.0), ValueError, "alarm_threshold"),
    ("unknown-mode", lambda: TrackerConfig(mode="acts"), ValueError, "`mode` must be one of"),
    ("zero-sae-budget", lambda: SAETrainConfig(training_tokens=0), ValueError, "training_tokens"),
    ("zero-d_sae", lambda: SAETrainConfig(d_sae=0), ValueError, "`d_sae` must be a positive"),
    ("zero-temperature", lambda: GRPOConfig(temperature=0), ValueError, "`temperature`"),
    (
        "zero-completion-length",
        lambda: GRPOConfig(max_completion_length=0),
        ValueError,
        "`max_completion_length`",
    ),
    ("zero-code-timeout", lambda: make_code_reward(timeout=0), ValueError, "`timeout`"),
    ("zero-code-workers", lambda: make_code_reward(max_workers=0), ValueError, "`max_workers`"),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [p[1:] for p in PURE], ids=[p[0] for p in PURE]
)
@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_pure_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_constant_realised_deltas_warn_and_give_nan():
    m = TransferabilityCorrelation()
    m.update(torch.tensor([0.1, 0.5, 0.2]), torch.tensor([-2.0, 2.0, 2.0]))  # |Δ| constant
    with pytest.warns(RuntimeWarning, match="`realised` is constant over 3 domains"):
        out = m.compute()
    assert torch.isnan(out["pearson"]) and torch.isnan(out["spearman"])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 6),
    cell=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
)
def test_a_non_finite_activation_anywhere_is_rejected_never_scored(n, d, cell, bad):
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(n * 7 + d))
    y = x.clone()
    y[cell[0] % n, cell[1] % d] = bad
    for call in (
        lambda: F.feature_shift(x, y),
        lambda: F.sts_act(y, [0]),
        lambda: F.sts_icl(x, y, [d - 1]),
        lambda: F.sts_notebook(y, list(range(d))),
    ):
        with pytest.raises(ValueError, match="NaN or inf"):
            call()
    moments, shift = LatentMoments(d), PairedShift(d)
    moments.update(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        moments.update(y)
    with pytest.raises(ValueError, match="NaN or inf"):
        shift.update(x, y)
    assert int(moments.n_tokens) == n and int(shift.n_tokens) == 0  # nothing half-added
    # Streaming = batch, with the (d_sae,) shape kept even for a single latent.
    torch.testing.assert_close(
        moments.sts_act(range(d)), x.double().sum(1).mean(), rtol=1e-6, atol=0
    )
    shift.update(x, x + 1)
    torch.testing.assert_close(shift.feature_shift(), torch.ones(d, dtype=torch.float64))


# ----------------------------------------------------------------------------- with a model
def test_eval_set_bad_budget_and_span(tiny_tokenizer):
    with pytest.raises(ValueError, match="`max_tokens` must be a positive int"):
        encode_eval_set(tiny_tokenizer, DOMAINS["law"], 0)
    with pytest.raises(ValueError, match="`span` must be 'all', 'answer' or 'prompt'"):
        encode_eval_set(tiny_tokenizer, DOMAINS["law"], 10, span="query")


@pytest.mark.parametrize(
    ("case", "error", "match"),
    [
        ("train-as-text", TypeError, "`train_examples` must be a sequence of Example"),
        ("domain-of-strings", TypeError, r"`domains\['law'\]` must contain only"),
        ("empty-domain", ValueError, r"`domains\['law'\]` has 0 examples"),
        ("no-chat-template", ValueError, "`tokenizer` has no chat template"),
        ("no-pad-no-eos", ValueError, "`tokenizer` has neither a pad nor an eos token"),
        ("sae-width", ValueError, "`sae` expects inputs of width d_in=16.*d_model=32"),
    ],
)
def test_predict_rejects(case, error, match, tiny_llama, tiny_tokenizer, tiny_sae):
    from sae_lens import StandardSAE, StandardSAEConfig

    from sts_lightning.forecast.predict import predict

    tok, sae, train, domains = tiny_tokenizer, tiny_sae, TRAIN, DOMAINS
    if case == "train-as-text":
        train = "What is 1 + 1?"
    elif case == "domain-of-strings":
        domains = {"law": ["a text", "another"]}
    elif case == "empty-domain":
        domains = {"law": []}
    elif case in ("no-chat-template", "no-pad-no-eos"):
        tok = copy.deepcopy(tiny_tokenizer)
        if case == "no-chat-template":
            tok.chat_template = None
        else:
            tok.pad_token, tok.eos_token = None, None
    elif case == "sae-width":
        sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=64))
        sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    with pytest.raises(error, match=match):
        predict(tiny_llama, tok, sae, train, domains, TINY)


def test_predict_with_nan_activations_names_the_cause(tiny_llama, tiny_tokenizer, tiny_sae):
    from sts_lightning.forecast.predict import predict

    broken = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"(?i)non-finite|NaN"):
        predict(broken, tiny_tokenizer, tiny_sae, TRAIN, DOMAINS, TINY)


def test_tracker_misuse(tiny_llama, tiny_tokenizer, tiny_sae):
    from sts_lightning.monitor.tracker import STSTracker

    with pytest.raises(TypeError, match="`evaluator` must be callable"):
        STSTracker(tiny_sae, TRAIN, DOMAINS, evaluator=3)
    with pytest.raises(RuntimeError, match=r"measure called before start\(\)"):
        STSTracker(tiny_sae, TRAIN, DOMAINS).measure(tiny_llama, tiny_tokenizer, step=1)
    from sts_lightning.model.rows import keep_rows
    from sts_lightning.model.sae import encode

    with pytest.raises(ValueError, match=r"`x` must have shape \(n_tokens, d_in=32\)"):
        encode(tiny_sae, torch.ones(2, 16))
    with pytest.raises(ValueError, match="`max_norm` must be a positive number"):
        keep_rows(torch.ones(2, 32), 0)

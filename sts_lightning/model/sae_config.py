"""How to train the SAE: :class:`SAETrainConfig`, the recipe :func:`train_sae` follows.

Every field except ``device`` and ``eval_every`` changes the trained weights, so they all enter
the cache key (:func:`~sts_lightning.model.sae_cache.sae_cache_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sts_lightning.config import at_least, check_fields, one_of, positive, positive_int

__all__ = ["SAETrainConfig"]


@dataclass
class SAETrainConfig:
    """How to train the SAE.

    Defaults: the CPU-sized recipe measured on SmolLM2-135M layer 12 by
    ``benchmarks/sae_training.py``: d_sae 4,608, k 32, 200 steps of 2,048 rows on 100k cached
    tokens → held-out FVU 0.17, L0 32 in ~2.3 min on 2 cores. Pass ``max_norm=500`` there to drop
    massive activations.
    """

    architecture: Literal["topk", "standard"] = "topk"
    """``"topk"`` (sparsity fixed by ``k``) or ``"standard"`` (ReLU + L1 penalty)."""
    d_sae: int | None = None
    """Number of latents; ``None`` → ``expansion_factor × d_in``."""
    expansion_factor: int = 8
    """Latents per input dimension when ``d_sae`` is ``None`` (8 × 576 = 4,608 for SmolLM2)."""
    k: int = 32
    """Active latents per token (TopK only)."""
    l1_coefficient: float = 5.0
    """Weight of the L1 sparsity penalty (standard only), on inputs of mean norm √d_in."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    lr_warm_up_steps: int = 10
    """Linear warm-up steps."""
    lr_decay_steps: int = 40
    """Final steps of linear decay to 0 (~20 % of the run)."""
    batch_size: int = 2048
    """Rows per step."""
    training_tokens: int = 409_600
    """Rows seen in total (steps = training_tokens // batch_size; default 200 steps, ~2.3 min on
    2 cores); more than the unique rows means several passes (4 over 100k cached tokens)."""
    max_norm: float | None = None
    """Drop rows with a larger norm (massive activations; 500 at SmolLM2 layer 12). ``None``
    keeps every finite row."""
    dead_feature_window: int = 50
    """Steps without firing after which a latent counts as dead (feeds TopK's auxiliary loss)."""
    n_eval_rows: int = 4096
    """Rows held out (never trained on) for FVU logging; at most a tenth of the rows."""
    eval_every: int = 50
    """Log held-out FVU / L0 every this many steps."""
    seed: int = 0
    """Seeds the initialisation, the shuffle and the held-out split."""
    device: str = "cpu"
    """Where to train; not part of the cache key."""

    def __post_init__(self) -> None:
        one_of("architecture", self.architecture, ("topk", "standard"))
        counts = ("expansion_factor", "k", "batch_size", "training_tokens", "n_eval_rows")
        check_fields(self, positive_int, *counts, "dead_feature_window", "eval_every")
        if self.d_sae is not None:
            positive_int("d_sae", self.d_sae)
        positive("lr", self.lr)
        at_least("l1_coefficient", self.l1_coefficient, 0)
        positive("max_norm", self.max_norm, optional=True)
        steps = self.training_tokens // self.batch_size
        # One message for both: they share the run's steps, so neither is wrong on its own.
        if min(self.lr_warm_up_steps, self.lr_decay_steps) < 0 or (
            self.lr_warm_up_steps + self.lr_decay_steps > steps
        ):
            raise ValueError(
                f"`lr_warm_up_steps` + `lr_decay_steps` = {self.lr_warm_up_steps} + "
                f"{self.lr_decay_steps} must be >= 0 and fit in the {steps} steps of "
                f"`training_tokens` // `batch_size`"
            )

    def resolved_d_sae(self, d_in: int) -> int:
        """``d_sae``, or ``expansion_factor × d_in`` when it is ``None``."""
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in

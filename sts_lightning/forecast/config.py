"""Dataclass configs: one per argument group, a docstring under every field, checks on creation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["PredictConfig"]

Tokens = Literal["prompt", "answer", "all"]


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")


@dataclass
class PredictConfig:
    """How the forecast is computed. Defaults follow the paper where it says (k, demos, budgets)."""

    layer: int | None = None
    """Decoder layer whose output (residual stream, ``blocks.L.hook_resid_post``) the SAE reads;
    ``None`` takes it from the SAE's metadata."""
    k: int = 100
    """Size of the shifted-latent set D (paper: 100)."""
    n_demos: int = 2
    """Training demonstrations (with answers) before each training query in the ICL prompt."""
    domain_demos: int = 5
    """In-domain demonstrations before each domain query for STS_ICL (paper: 5); 0 skips the
    ICL pass over domains and STS_ICL is not reported."""
    train_tokens: int = 10_000
    """Budget of training-query tokens compared with and without demonstrations (each counted
    once: 10k base + 10k ICL rows = the paper's ~20k)."""
    domain_tokens: int = 10_000
    """Budget of tokens per domain (paper: 10k). A domain with fewer gets a warning and is
    scored on what it has."""
    train_span: Tokens = "all"
    """Which training-query tokens are compared: the prompt, the answer, or both."""
    domain_span: Tokens = "all"
    """Which domain tokens are scored."""
    batch_size: int = 8
    """Sequences per forward pass."""
    max_norm: float | None = None
    """Drop token rows whose residual norm exceeds this (massive activations, e.g. 500 at layer 12
    of SmolLM2); ``None`` sets it to ``outlier_factor`` × the median norm of the first batch."""
    outlier_factor: float = 10.0
    """Multiple of the median residual norm above which a row is a massive activation, when
    ``max_norm`` is ``None``."""
    exclude_special_tokens: bool = True
    """Leave the tokenizer's special tokens (BOS, ``<|im_end|>``, …) out of every statistic."""
    use_chat_template: bool = True
    """Render examples with the tokenizer's chat template; ``False`` uses raw text."""
    system_prompt: str | None = None
    """Explicit system message; ``None`` keeps whatever the chat template inserts."""
    seed: int = 0
    """Seeds the choice of examples within the budgets and of demonstrations."""
    progress: bool = True
    """Show progress bars during extraction."""

    def __post_init__(self) -> None:
        for name in ("k", "train_tokens", "domain_tokens", "batch_size"):
            _positive_int(name, getattr(self, name))
        for name in ("n_demos", "domain_demos"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be an int >= 0, got {value!r}")
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 0):
            raise ValueError(f"`layer` must be an int >= 0 or None, got {self.layer!r}")
        for name in ("train_span", "domain_span"):
            if getattr(self, name) not in ("prompt", "answer", "all"):
                raise ValueError(
                    f"`{name}` must be 'prompt', 'answer' or 'all', got {getattr(self, name)!r}"
                )
        if self.max_norm is not None and not self.max_norm > 0:
            raise ValueError(f"`max_norm` must be > 0 or None, got {self.max_norm!r}")
        if not self.outlier_factor > 1:
            raise ValueError(f"`outlier_factor` must be > 1, got {self.outlier_factor!r}")

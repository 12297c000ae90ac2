"""LoRA settings and how they are applied, without Lightning (settings dataclasses import this).

:class:`LoraConfig` is what a recipe or :class:`~sts_lightning.experiment.config.FinetuneConfig`
states; :func:`apply_lora` wraps a Hugging Face model in a ``peft`` adapter. ``peft`` is imported
only when an adapter is built (it costs seconds of imports).

Example:
    >>> LoraConfig(r=8).alpha / LoraConfig(r=8).r  # the update's scale
    4.0
"""

from __future__ import annotations

from dataclasses import dataclass

from sts_lightning.config import positive, positive_int

__all__ = ["LoraConfig", "apply_lora"]


@dataclass
class LoraConfig:
    """A LoRA adapter (peft) on the frozen base model."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: str | list[str] = "all-linear"
    """Module names (or suffixes) to adapt; ``"all-linear"``: every linear layer but the head."""

    def __post_init__(self) -> None:
        positive_int("r", self.r)
        positive("alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ValueError("`target_modules` must name at least one module, got an empty value")

    def to_peft(self):
        """The equivalent ``peft.LoraConfig``."""
        from peft import LoraConfig  # lazy: ~5 s of imports, only for LoRA runs

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


def apply_lora(model, settings: LoraConfig):
    """``model`` wrapped in a fresh LoRA adapter: only the adapter's weights require grad.

    Args:
        model: A Hugging Face causal LM.
        settings: The adapter.

    Returns:
        The ``peft.PeftModel``; ``disable_adapter()`` on it gives the base model back.
    """
    from peft import get_peft_model  # lazy: see to_peft

    return get_peft_model(model, settings.to_peft())

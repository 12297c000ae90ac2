"""What :class:`~sts_lightning.training.sft.SFTModule` and
:class:`~sts_lightning.training.grpo.GRPOModule` share; each keeps its own training step.

- Model preparation: :func:`prepare_model` (gradient checkpointing, then a LoRA adapter or the
  tied-embedding freeze), :func:`load_tokenizer` and :func:`keep_model_sources`.
- :class:`HFModelMixin`: the lazily loaded ``model`` (Lightning calls ``configure_model`` inside
  its device / sharding contexts, as FSDP needs), one checkpoint policy, and ``save_hf``.

The checkpoint policy: a checkpoint stores the trainable parameters and the module's own state
(buffers outside ``model``, e.g. SFT's ``tokens_seen``), not the frozen weights, which equal the
base model's and are reloaded from it (a LoRA checkpoint of an 8B model is megabytes, not
16 GB). The keys come from local parameter names, never from a gathered state dict, so saving
is no collective under FSDP; sharded checkpoints (every rank writes its shard, and a distributed
load needs every key back) are left whole.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sts_lightning.training.lora import LoraConfig, apply_lora
from sts_lightning.training.resume import settle_epoch_end

__all__ = ["HFModelMixin", "keep_model_sources", "load_tokenizer", "prepare_model"]

log = logging.getLogger(__name__)

# Names FSDP / activation checkpointing / torch.compile insert between a parameter's module names.
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def keep_model_sources(module: Any, model: Any, tokenizer: Any) -> None:
    """Keep on ``module`` what ``configure_model`` and ``tokenizer`` load from (as
    ``_model_source``, ``_tokenizer_source``); a tokenizer object is ready (with a pad token)."""
    if tokenizer is None and not isinstance(model, (str, Path)):
        raise ValueError("`tokenizer` is required when `model` is a model object")
    # A plain attribute, not a submodule: configure_model installs the model (prepared).
    object.__setattr__(module, "_model_source", model)
    module._tokenizer_source = tokenizer if isinstance(tokenizer, (str, Path)) else None
    module._tokenizer = None if module._tokenizer_source else tokenizer
    if module._tokenizer is not None and module._tokenizer.pad_token is None:
        module._tokenizer.pad_token = module._tokenizer.eos_token


def load_tokenizer(name_or_path: str, *, cache_dir: str | None = None, trust_remote_code=False):
    """The tokenizer of a checkpoint (or ``embedded:`` alias), always with a pad token (EOS when
    it has none, as :func:`~sts_lightning.model.loading.load_model_and_tokenizer`)."""
    from transformers import AutoTokenizer

    from sts_lightning.model.loading import resolve_model

    path = resolve_model(name_or_path, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_model(
    model,
    *,
    gradient_checkpointing: bool = False,
    lora: LoraConfig | None = None,
    freeze_tied_embeddings: bool = False,
):
    """Make a loaded HF causal LM ready to train; returns it (a ``peft`` model with LoRA).

    Args:
        model: The model.
        gradient_checkpointing: Recompute activations in the backward pass.
        lora: Wrap it in this adapter (only the adapter then trains).
        freeze_tied_embeddings: Without LoRA, freeze the input embedding when the LM head shares
            it.
    """
    from sts_lightning.model import precision

    if gradient_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) without enable_input_require_grads.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        model = apply_lora(model, lora)
    elif freeze_tied_embeddings:
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and head.weight is embedding.weight:
            embedding.weight.requires_grad_(False)
            log.info("tied input/output embedding frozen (freeze_tied_embeddings=True)")
    precision.share_input_casts(model)  # bf16 autocast: one saved copy per input, not per layer
    precision.recast_frozen_weights(model)  # and none of a frozen weight (cast again in backward)
    return model


def _clean(name: str) -> str:
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def trainable_keys(module: torch.nn.Module) -> set[str] | None:
    """State-dict keys of ``module``'s trainable parameters, under every name a tied one has.

    ``None`` when FSDP flattened the parameters (``use_orig_params=False``): their names are
    then lost.
    """
    names = [n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad]
    if any("_flat_param" in name for name in names):
        return None
    return {_clean(name) for name in names}


def _is_sharded(state: dict[str, Any]) -> bool:
    return any(type(v).__name__ in ("DTensor", "ShardedTensor") for v in state.values())


class HFModelMixin:
    """The lazily loaded HF ``model``, the checkpoint policy and ``save_hf`` of a LightningModule.

    Mixed in before ``LightningModule``. The module defines ``configure_model`` (loading the
    model, then :meth:`_install_model`) and ``tokenizer``; its hyperparameters may hold ``lora``
    and ``checkpoint_frozen_weights``.
    """

    @property
    def model(self):
        """The HF model (a ``peft`` model with LoRA); loaded on first access."""
        if "model" not in self._modules:
            self.configure_model()
        return self._modules["model"]

    def _install_model(self, model) -> None:
        # Through _modules: `model` is a read-only property that loads on demand.
        self._modules["model"] = model.train()
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        log.info("trainable parameters: %s of %s (%.2f %%)", n_train, n_all, 100 * n_train / n_all)

    @property
    def strict_loading(self) -> bool:
        """Strict only when checkpoints hold every weight: Lightning's FSDP strategies load a
        consolidated checkpoint before ``on_load_checkpoint`` could fill in the frozen weights;
        that hook checks the keys itself."""
        return bool(self.hparams.get("checkpoint_frozen_weights", False))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        if self.hparams.get("checkpoint_frozen_weights", False) or _is_sharded(state):
            return
        keep = trainable_keys(self)
        if keep is None:
            return
        # The frozen weights equal the base model's: on_load_checkpoint takes them from there.
        checkpoint["state_dict"] = {
            k: v for k, v in state.items() if k in keep or not k.startswith("model.")
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before Lightning restores its loops: an epoch-end checkpoint then resumes at the
        # next epoch's first batch, with that epoch's shuffle (see training/resume.py).
        trainer = self._trainer
        settle_epoch_end(checkpoint, trainer.accumulate_grad_batches if trainer else 1)
        stored = checkpoint.get("state_dict")
        if stored is None:  # FSDP strategies have loaded the weights already
            return
        self.configure_model()  # a no-op under a trainer, which has called it already
        live = self.state_dict()
        required = (trainable_keys(self) or set()) | {k for k in live if not k.startswith("model.")}
        missing, unexpected = sorted(required - set(stored)), sorted(set(stored) - set(live))
        if missing or unexpected:
            raise RuntimeError(
                f"the checkpoint does not match this module's trainable weights (its LoRA adapter "
                f"or full model): missing {missing[:5]} (of {len(missing)}), unexpected "
                f"{unexpected[:5]} (of {len(unexpected)}); check `lora` and the model against the "
                "run that wrote it"
            )
        # Called before the state dict is loaded: the frozen weights it leaves out come from the
        # base model just loaded, so the load is complete.
        for key, value in live.items():
            stored.setdefault(key, value)

    def _reduce_named(self, sums: dict[str, Tensor]) -> tuple[list[str], Tensor]:
        """``sums`` per validation loader summed over ranks: ``(names, (loaders, ...))``."""
        names = list(sums)  # loaders run in the same order on every rank
        stacked = torch.stack([sums[k] for k in names])
        return names, self.trainer.strategy.reduce(stacked, reduce_op="sum")

    def save_hf(self, path: str | Path) -> Path:
        """Write the model (or LoRA adapter) and tokenizer with ``save_pretrained``.

        Under a trainer every rank must call it (a sharded model is gathered first); rank 0
        writes. ``from_pretrained(path)`` (or ``PeftModel.from_pretrained`` on the base model for
        an adapter) reloads it.

        Args:
            path: Output directory.

        Returns:
            ``path`` as a :class:`~pathlib.Path`.
        """
        path, trainer, state_dict = Path(path), self._trainer, None
        if trainer is not None:
            from lightning.pytorch.strategies import FSDPStrategy

            if isinstance(trainer.strategy, FSDPStrategy):  # gather the shards (a collective)
                full = trainer.strategy.lightning_module_state_dict()
                state_dict = {
                    k[len("model.") :]: v for k, v in full.items() if k.startswith("model.")
                }
        if trainer is None or trainer.is_global_zero:
            kwargs = {} if state_dict is None else {"state_dict": state_dict}
            self.model.save_pretrained(path, **kwargs)
            self.tokenizer.save_pretrained(path)
            kind = "adapter" if self.hparams.get("lora") else "model"
            log.info("saved the HF %s to %s", kind, path)
        if trainer is not None:
            trainer.strategy.barrier("sts_save_hf")
        return path

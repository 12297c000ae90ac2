"""Supervised fine-tuning of any Hugging Face causal LM as a LightningModule.

The loss is the mean negative log-likelihood of the labelled tokens: batches carry ``labels``
equal to ``input_ids`` where the data format puts the loss (the answer, the completion, the
assistant turns, or every token) and ``-100`` everywhere else (prompt, chat template, padding),
as :class:`~sts_lightning.training.data.SFTDataModule` builds them; packed batches carry
``position_ids`` instead of ``attention_mask``. Logits are computed only at the positions
whose next token is labelled (the model's own ``logits_to_keep`` with a boolean mask): on short
answers this skips most of the vocabulary projection, which dominates the cost of a small model
on CPU.

The HF model is loaded lazily (:meth:`SFTModule.configure_model`, or the first access to
:attr:`SFTModule.model` / :attr:`SFTModule.tokenizer`): building the module from a recipe reads
no weights, and Lightning loads them inside its device / sharding contexts.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from sts_lightning.config import positive_int
from sts_lightning.data.batching import LENGTH_MULTIPLE, padded_length
from sts_lightning.model.loading import (
    DEFAULT_MODEL,
    check_model_init_kwargs,
    load_model_and_tokenizer,
)
from sts_lightning.monitor.teacher_forcing import scored_logits
from sts_lightning.training import base, optim
from sts_lightning.training.base import HFModelMixin
from sts_lightning.training.lora import LoraConfig
from sts_lightning.training.optim import OptimizerCallable, check_schedule

# LoraConfig: re-exported, its home was here.
__all__ = ["LoraConfig", "SFTModule", "answer_nll", "split_rows"]

log = logging.getLogger(__name__)


def answer_nll(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    labels: Tensor,
    position_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed NLL of the labelled tokens and their count, with logits only where needed.

    Args:
        model: A Hugging Face causal LM (or a peft model around one).
        input_ids: ``(B, T)`` token ids.
        attention_mask: ``(B, T)``, 1 on real tokens; ``None`` for packed rows.
        labels: ``(B, T)``: the token id where it carries loss, ``-100`` elsewhere (unshifted, the
            HF convention: the logits at ``t`` are scored against ``labels[t + 1]``).
        position_ids: ``(B, T)`` of packed rows, restarting at 0 at each example (which keeps
            the examples from attending to each other; :mod:`sts_lightning.data.packing`).

    Returns:
        ``(nll_sum, n_tokens)``, two scalars; ``nll_sum`` is fp32 and differentiable.
    """
    targets = labels[:, 1:]  # (B, T-1): the token each position predicts
    scored = F.pad(targets != -100, (0, 1), value=False)  # (B, T): positions with a target
    logits = scored_logits(model, input_ids, attention_mask, scored, position_ids)  # (N, V)
    n_tokens = scored.sum()
    # fp32 log-softmax: under bf16 autocast the logits come out in bf16.
    nll = F.cross_entropy(logits.float(), targets[scored[:, :-1]], reduction="sum")
    return nll, n_tokens


def split_rows(inputs: tuple, micro: int, pad_to_multiple_of: int = LENGTH_MULTIPLE) -> list[tuple]:
    """``(input_ids, attention_mask, labels, position_ids)`` cut into parts of ``micro`` rows,
    each right-trimmed to its own longest row rounded up to ``pad_to_multiple_of`` (as the
    collator pads: few shapes; packed rows, without a mask, keep their width).

    Example:
        >>> ids = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]])
        >>> parts = split_rows((ids, (ids > 0).long(), ids, None), 2, pad_to_multiple_of=1)
        >>> [tuple(p[0].shape) for p in parts]
        [(2, 3), (1, 1)]
        >>> [tuple(p[0].shape) for p in split_rows((ids, (ids > 0).long(), ids, None), 2, 2)]
        [(2, 3), (1, 2)]
    """
    mask, full = inputs[1], inputs[0].shape[1]
    parts = []
    for first in range(0, inputs[0].shape[0], micro):
        rows = slice(first, first + micro)
        longest = int(mask[rows].sum(-1).max()) if mask is not None else full
        width = min(full, padded_length(longest, pad_to_multiple_of))
        parts.append(tuple(None if x is None else x[rows, :width] for x in inputs))
    return parts


def _model_inputs(batch: dict[str, Any]) -> tuple:
    """``(input_ids, attention_mask, labels, position_ids)``: packed batches have no mask."""
    mask, positions = batch.get("attention_mask"), batch.get("position_ids")
    return batch["input_ids"], mask, batch["labels"], positions


class SFTModule(HFModelMixin, LightningModule):
    """Fine-tune a causal LM on (prompt, answer) pairs, loss on answer tokens only.

    Args:
        model_name_or_path: ``"embedded:smollm2"``, a local checkpoint directory or a hub id.
        dtype: Dtype the weights are loaded in (``"float32"``, ``"bfloat16"``, ...). With
            ``precision="bf16-mixed"`` keep fp32 for full fine-tuning; a LoRA base may be bf16.
        trust_remote_code: Run modelling code shipped with the checkpoint (off: it is arbitrary
            code).
        cache_dir: Cache root of embedded models.
        lora: Train a LoRA adapter instead of every weight (a dict of its fields works too);
            ``None``: full fine-tuning.
        freeze_tied_embeddings: In full fine-tuning, freeze the input embedding when the LM head
            shares it: it is most of a small model's parameters and optimizer time, and an
            update there moves every token's input representation at once.
        gradient_checkpointing: Recompute activations in the backward pass (less memory, slower).
        micro_batch_size: Rows per forward and backward inside a training batch: each batch is
            run ``micro_batch_size`` rows at a time, each part's summed NLL divided by the whole
            batch's labelled tokens, so the gradient is the batch's token mean as without it
            (up to summation order) and only one part's activations are alive at a time.
            Unlike ``accumulate_grad_batches`` it changes neither the data order nor the loss
            weighting. One device only. ``None``: the whole batch at once.
        model_init_kwargs: Extra ``from_pretrained`` arguments (``attn_implementation``,
            ``quantization_config``, ``device_map``, ...), as TRL's ``model_init_kwargs``.
        optimizer: Builds the optimizer from parameter groups (in YAML a ``class_path`` and its
            ``init_args``); ``None``: AdamW (:mod:`~sts_lightning.training.optim`).
        learning_rate: Peak learning rate, set on every parameter group.
        weight_decay: Decay of matrices (biases and norms are never decayed).
        warmup_steps: Warm-up: optimizer steps when >= 1, a fraction of the run when below 1.
        lr_scheduler_type: A ``transformers.get_scheduler`` name (``"cosine"``, ``"linear"``,
            ``"cosine_with_min_lr"``, ``"constant_with_warmup"``, ...), stepped per optimizer
            step.
        lr_scheduler_kwargs: The schedule's own arguments (``{"min_lr_rate": 0.1}``, ...).
        save_hf_on_fit_end: Write ``<log_dir>/hf_model`` (``save_pretrained``) when ``fit`` ends.
        checkpoint_frozen_weights: Also store frozen weights in Lightning checkpoints. Off: only
            trainable weights are stored (a LoRA checkpoint of an 8B model is then megabytes, not
            16 GB); frozen ones are reloaded from ``model_name_or_path`` on restore.
    """

    def __init__(
        self,
        model_name_or_path: str = DEFAULT_MODEL,
        *,
        dtype: str = "float32",
        trust_remote_code: bool = False,
        cache_dir: str | None = None,
        lora: LoraConfig | dict[str, Any] | None = None,
        freeze_tied_embeddings: bool = True,
        gradient_checkpointing: bool = False,
        micro_batch_size: int | None = None,
        model_init_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable | None = None,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int | float = 0,
        lr_scheduler_type: str = "cosine",
        lr_scheduler_kwargs: dict[str, Any] | None = None,
        save_hf_on_fit_end: bool = True,
        checkpoint_frozen_weights: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model_name_or_path, str) or not model_name_or_path:
            raise ValueError(
                f"`model_name_or_path` must be a non-empty string, got {model_name_or_path!r}"
            )
        check_schedule(
            learning_rate, weight_decay, warmup_steps, lr_scheduler_type, lr_scheduler_kwargs
        )
        check_model_init_kwargs(model_init_kwargs)
        if micro_batch_size is not None:
            positive_int("micro_batch_size", micro_batch_size)
        if isinstance(lora, dict):  # from a checkpoint's hyperparameters
            lora = LoraConfig(**lora)
        # The optimizer is an object, not a hyperparameter: the CLI's config.yaml records it.
        self.save_hyperparameters(ignore=["lora", "optimizer"])
        self._optimizer_factory = optimizer
        # Stored as a dict: checkpoints load with weights_only=True, which refuses custom classes.
        self.hparams["lora"] = None if lora is None else asdict(lora)
        self.lora = lora
        self._tokenizer = None
        self._val_sums: dict[str, Tensor] = {}
        self._zeroed_at: int | None = None  # batch whose micro-batches zeroed the gradients
        # Answer tokens trained on, over all ranks; a buffer, so checkpoints carry it.
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long))

    # ----------------------------------------------------------------------------- the model
    @property
    def tokenizer(self):
        """The tokenizer of ``model_name_or_path`` (always with a pad token)."""
        if self._tokenizer is None:
            hp = self.hparams
            self._tokenizer = base.load_tokenizer(
                hp.model_name_or_path,
                cache_dir=hp.cache_dir,
                trust_remote_code=hp.trust_remote_code,
            )
        return self._tokenizer

    def configure_model(self) -> None:
        """Load the model (idempotent); Lightning calls it before fit/validate and on restore."""
        if "model" in self._modules:
            return
        hp = self.hparams
        model, tokenizer = load_model_and_tokenizer(
            hp.model_name_or_path,
            dtype=hp.dtype,
            trust_remote_code=hp.trust_remote_code,
            cache_dir=hp.cache_dir,
            model_init_kwargs=hp.model_init_kwargs,
        )
        model = base.prepare_model(
            model,
            gradient_checkpointing=hp.gradient_checkpointing,
            lora=self.lora,
            freeze_tied_embeddings=hp.freeze_tied_embeddings,
        )
        if self._tokenizer is None:
            self._tokenizer = tokenizer
        self._install_model(model)

    # ----------------------------------------------------------------------------- steps
    def on_fit_start(self) -> None:
        if self.hparams.get("micro_batch_size") and self.trainer.world_size > 1:
            raise ValueError(
                "`micro_batch_size` runs extra backward passes inside a step, which a "
                f"distributed strategy does not expect (world size {self.trainer.world_size}): "
                "use the Trainer's `accumulate_grad_batches` instead"
            )

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        if self._zeroed_at == batch_idx:  # zeroed before this step's micro-batches already
            self._zeroed_at = None
            return
        optimizer.zero_grad()

    def _micro_batched(self, inputs: tuple, micro: int, batch_idx: int) -> tuple[Tensor, Tensor]:
        """``(loss, n_tokens)`` of a batch run ``micro`` rows at a time.

        Every part but the last is back-propagated here, scaled as Lightning scales the
        returned loss (gradient accumulation, a gradient scaler); the last part's loss is
        returned with the others' values added as constants, so Lightning's own backward
        completes the batch's gradient and the logged loss is the batch's.
        """
        labels, accumulate = inputs[2], self.trainer.accumulate_grad_batches
        # Lightning zeroes the gradients after `training_step`, before its own backward
        # (the first batch of each accumulation window): zero them now instead, so that the
        # parts' gradients survive (see `optimizer_zero_grad`).
        if batch_idx % accumulate == 0:
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad()
            self._zeroed_at = batch_idx
        n = (labels[:, 1:] != -100).sum()  # the whole batch's labelled tokens
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        *early, last = split_rows(inputs, micro)
        done = torch.zeros((), device=labels.device)
        for part in early:
            nll = answer_nll(self.model, *part)[0] / n.clamp_min(1)
            done = done + nll.detach()
            nll = nll / accumulate
            with torch.autocast(labels.device.type, enabled=False):  # backward outside autocast
                (nll if scaler is None else scaler.scale(nll)).backward()
        return answer_nll(self.model, *last)[0] / n.clamp_min(1) + done, n

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        inputs = _model_inputs(batch)
        micro = self.hparams.get("micro_batch_size")
        if micro and micro < inputs[0].shape[0]:
            loss, n = self._micro_batched(inputs, micro, batch_idx)
        else:
            nll, n = answer_nll(self.model, *inputs)
            loss = nll / n.clamp_min(1)
        with torch.no_grad():
            self.tokens_seen += self.trainer.strategy.reduce(n.detach(), reduce_op="sum")
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/tokens", self.tokens_seen.double(), batch_size=batch_size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        nll, n = answer_nll(self.model, *_model_inputs(batch))
        # The data module names each loader (its domain); a bare loader falls back to its index.
        name = batch.get("name") or str(dataloader_idx)
        sums = torch.stack([nll.detach().double(), n.double()])
        self._val_sums[name] = self._val_sums.get(name, 0) + sums

    def on_validation_epoch_end(self) -> None:
        if not self._val_sums:
            return
        names, sums = self._reduce_named(self._val_sums)  # (loaders, 2)
        losses = sums[:, 0] / sums[:, 1].clamp_min(1)  # token-weighted mean NLL per loader
        # Equal on every rank already; sync_dist only keeps Lightning's distributed check quiet.
        for name, loss in zip(names, losses, strict=True):
            self.log(f"val/loss/{name}", loss.float(), add_dataloader_idx=False, sync_dist=True)
        # Unweighted mean over domains: one number for checkpoint selection and early stopping.
        self.log("val/loss", losses.mean().float(), add_dataloader_idx=False, sync_dist=True)
        self._val_sums = {}

    # ----------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        total = optim.run_length(self.trainer)
        return optim.configure(self, self._optimizer_factory, self.hparams, total)

    # ----------------------------------------------------------------------------- export
    def on_fit_end(self) -> None:
        if self.hparams.save_hf_on_fit_end:
            root = self.trainer.log_dir or self.trainer.default_root_dir
            self.save_hf(Path(root) / "hf_model")

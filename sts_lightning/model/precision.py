"""Which precision a forward or a training step runs in: bf16 autocast where the chip has it.

One decision, made here for fine-tuning and evaluation alike. A GPU with bf16 support, or a
CPU with native bf16 instructions (AVX512-BF16 or AMX, as ``torch.cpu`` reports them), runs
matrix products in bf16 under autocast at about twice the fp32 speed (SmolLM2-135M on a
2-core AVX512-BF16 CPU: a train step 1.85×, a forward 2.2–2.6×; ``benchmarks/precision.py``).
A CPU without them emulates bf16 and is slower than fp32, so ``"auto"`` keeps fp32 there.

Autocast keeps the weights, the residual stream, norms and softmax in fp32; only the matrix
products round their inputs to bf16. The SAE statistics and the forecast stay in fp32: they
run outside any autocast region.

Training under bf16 autocast keeps fewer bf16 copies for backward, with the same numbers to the
bit: one per Linear input read by several layers (:func:`share_input_casts`) and none of a
frozen weight (:func:`recast_frozen_weights`); :func:`~sts_lightning.training.base.prepare_model`
installs both.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch.utils.hooks import RemovableHandle

__all__ = [
    "PRECISIONS",
    "autocast",
    "native_bf16",
    "recast_frozen_weights",
    "resolve_precision",
    "share_input_casts",
]

PRECISIONS = ("auto", "bf16-mixed", "32-true")
"""Settings a user may give: ``auto`` (bf16 autocast where native, else fp32), or either."""


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bf16 matrix products natively (faster than fp32).

    Example:
        >>> isinstance(native_bf16("cpu"), bool)
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def resolve_precision(
    precision: str, device: torch.device | str = "cpu", field: str = "precision"
) -> str:
    """The Lightning precision a ``precision`` setting means on ``device``.

    Args:
        precision: ``"auto"``, ``"bf16-mixed"`` or ``"32-true"`` (Lightning's names).
        device: Where the model runs.
        field: The setting's name, for errors.

    Returns:
        ``"bf16-mixed"`` or ``"32-true"``.

    Raises:
        ValueError: ``precision`` is none of :data:`PRECISIONS` (the field named).

    Example:
        >>> resolve_precision("32-true"), resolve_precision("bf16-mixed", "cpu")
        ('32-true', 'bf16-mixed')
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`{field}` must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16-mixed" if native_bf16(device) else "32-true"
    return precision


@contextmanager
def autocast(precision: str, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the enclosed forwards in ``precision`` (resolved as :func:`resolve_precision`).

    ``bf16-mixed`` is ``torch.autocast(device.type, torch.bfloat16)``; ``32-true`` changes
    nothing. Outputs of matrix products come back in bf16; callers that keep values cast them
    (the scoring passes read log-probabilities in float64).

    Example:
        >>> lin = torch.nn.Linear(4, 4)
        >>> with autocast("bf16-mixed", "cpu"):
        ...     lin(torch.ones(1, 4)).dtype
        torch.bfloat16
    """
    device = torch.device(device)
    if resolve_precision(precision, device) == "32-true":
        context = nullcontext()
    else:
        context = torch.autocast(device.type, dtype=torch.bfloat16)
    with context:
        yield


class _SharedCast(torch.autograd.Function):
    """``cast`` (a bf16 copy of ``x``, made once) as a new view with its own backward, the
    one autocast's cast has (the gradient back to fp32): each reader keeps its own gradient
    path, so the gradients are summed in fp32 exactly as with separate casts."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cast: torch.Tensor) -> torch.Tensor:
        return cast.view_as(cast)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.to(torch.float32), None


class _CastCache:
    """One bf16 copy per fp32 input that several Linear layers read in one forward."""

    def __init__(self) -> None:
        self.copies: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def pre_hook(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
            return None
        kind = x.device.type
        if not torch.is_autocast_enabled(kind) or torch.get_autocast_dtype(kind) != torch.bfloat16:
            return None
        key = id(x)
        hit = self.copies.get(key)
        if hit is None or hit[0]() is not x:
            # The entry leaves with its input: nothing outlives the forward that made it.
            gone = weakref.ref(x, lambda _, key=key: self.copies.pop(key, None))
            with torch.no_grad():
                hit = self.copies[key] = (gone, x.to(torch.bfloat16))
        return (_SharedCast.apply(x, hit[1]), *args[1:])


def share_input_casts(model: torch.nn.Module) -> list[RemovableHandle]:
    """Under bf16 autocast, cast each fp32 input of ``model``'s Linear layers to bf16 once.

    Autocast casts a Linear's fp32 input for every layer that reads it, and each copy is kept
    for the backward pass: in a decoder layer the normed hidden state feeds q, k and v (gate
    and up in the MLP), and with LoRA each adapter's ``lora_A`` too, so 10 bf16 copies of the
    same ``(B, T, d)`` tensor per layer where 2 would do. Forward pre-hooks on every Linear hand
    them one shared copy (the same cast, so the same numbers to the bit), held only as long as
    its fp32 input lives. Outside bf16 autocast the hooks do nothing.

    Args:
        model: A module whose Linear layers should share casts (an HF causal LM, a peft model).

    Returns:
        The hooks' handles (``handle.remove()`` undoes it).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> handles = share_input_casts(net)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     net(torch.ones(2, 4)).dtype
        torch.bfloat16
        >>> len(handles)
        1
    """
    cache = _CastCache()
    return [
        m.register_forward_pre_hook(cache.pre_hook)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    ]


class _RecastLinear(torch.autograd.Function):
    """``linear(x, weight.bf16, bias.bf16)`` that keeps the frozen fp32 ``weight`` for backward
    (a tensor that lives anyway) and casts it again there, instead of keeping the bf16 copy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(weight)
        low = torch.bfloat16
        b = None if bias is None else bias.to(low)
        return torch.nn.functional.linear(x.to(low), weight.to(low), b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (weight,) = ctx.saved_tensors
        # autocast's linear backward: grad @ W in bf16, then the cast's backward to x's dtype
        return grad.matmul(weight.to(grad.dtype)).to(ctx.x_dtype), None, None


class _RecastForward:
    """A Linear layer's ``forward``: :class:`_RecastLinear` where it applies, else the layer's
    own. An object rather than a bound method, so the layer still pickles and copies."""

    def __init__(self, module: torch.nn.Linear) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        weight, bias = module.weight, module.bias
        kind = x.device.type
        if (
            torch.is_grad_enabled()
            and x.requires_grad
            and not weight.requires_grad
            and weight.dtype == torch.float32
            and (bias is None or not bias.requires_grad)
            and torch.is_autocast_enabled(kind)
            and torch.get_autocast_dtype(kind) == torch.bfloat16
        ):
            return _RecastLinear.apply(x, weight, bias)
        return torch.nn.Linear.forward(module, x)


class _Restore:
    """Undoes :func:`recast_frozen_weights` on one module (``remove()``, as a hook handle)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = weakref.ref(module)

    def remove(self) -> None:
        module = self.module()
        if module is not None and "forward" in vars(module):
            del module.forward


def recast_frozen_weights(model: torch.nn.Module) -> list[_Restore]:
    """Under bf16 autocast, keep no bf16 copy of a frozen fp32 Linear weight for backward.

    Autocast casts a Linear's fp32 weight to bf16 for each forward and, when the product needs
    a gradient for its input, keeps that copy until the backward pass: with a frozen base model
    (LoRA) every layer's weight lives twice during a step, fp32 and bf16 (SmolLM2-135M:
    255 MB, a third of what a step of 4 rows × 160 tokens keeps). Here the product keeps the
    fp32 weight it already has and casts it again in backward: the same products to the bit,
    for one more cast of each weight per backward pass. Trained weights, fp32 runs, forwards
    without gradients and Linear subclasses with their own ``forward`` are left as they are.

    Args:
        model: A module whose frozen Linear layers should not keep bf16 copies (an HF causal
            LM with a LoRA adapter, whose tied LM head is frozen too).

    Returns:
        Handles, one per Linear layer changed (``handle.remove()`` undoes it).

    Example:
        >>> net = torch.nn.Linear(4, 4).requires_grad_(False)
        >>> handles = recast_frozen_weights(net)
        >>> x = torch.ones(2, 4, requires_grad=True)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     y = net(x)
        >>> y.dtype, type(y.grad_fn).__name__
        (torch.bfloat16, '_RecastLinearBackward')
    """
    changed = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and type(m).forward is torch.nn.Linear.forward:
            m.forward = _RecastForward(m)
            changed.append(_Restore(m))
    return changed

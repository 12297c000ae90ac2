"""Which precision a forward or a training step runs in: bf16 autocast where the chip has it.

One decision, made here for fine-tuning and evaluation alike. A GPU with bf16 support, or a
CPU with native bf16 instructions (AVX512-BF16 or AMX, as ``torch.cpu`` reports them), runs
matrix products in bf16 under autocast at about twice the fp32 speed (SmolLM2-135M on a
2-core AVX512-BF16 CPU: a train step 1.85×, a forward 2.2–2.6×; ``benchmarks/precision.py``).
A CPU without them emulates bf16 and is slower than fp32, so ``"auto"`` keeps fp32 there.

Autocast keeps the weights, the residual stream, norms and softmax in fp32; only the matrix
products round their inputs to bf16. The SAE statistics and the forecast stay in fp32: they
run outside any autocast region.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

__all__ = ["PRECISIONS", "autocast", "native_bf16", "resolve_precision"]

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

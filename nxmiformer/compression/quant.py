"""Symmetric signed integer fake-quantization with a straight-through estimator.

Granularity of the weight scales (``group_size``):

=============  ==========================================================
``None``       one scale per output row (per channel), the default
``g > 0``      ``g`` consecutive output rows share one scale
``-1``         one scale for the whole tensor
=============  ==========================================================

Scales come from the max-abs of their rows when not given. The integer grid for ``b`` bits is
``[-(2^(b-1)-1), 2^(b-1)-1]`` (symmetric: -2^(b-1) is never used, so zero-point is always 0).
"""

from __future__ import annotations

import math

import torch

from ..errors import NxmiError

INT_BITS = tuple(range(2, 9))


class _RoundSTE(torch.autograd.Function):
    """Round half to even in the forward pass; identity gradient (straight-through)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``torch.round`` with a straight-through gradient."""
    return _RoundSTE.apply(x)


def qmax(bits: int) -> int:
    """Largest integer of the symmetric ``bits``-bit grid."""
    return 2 ** (bits - 1) - 1


def check_bits(bits: int) -> None:
    if isinstance(bits, bool) or bits not in INT_BITS:
        raise NxmiError(f"integer bits must be one of 2..8, got bits={bits!r}")


def check_group_size(group_size: int | None, rows: int | None = None) -> None:
    if group_size is None or group_size == -1:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise NxmiError(f"group_size must be None (per row), -1 (per tensor) or a positive int, got {group_size!r}")


def num_scales(rows: int, group_size: int | None) -> int:
    """How many scales a ``rows``-row weight has at this granularity."""
    if group_size is None:
        return rows
    if group_size == -1:
        return 1
    return math.ceil(rows / group_size)


def expand_scales(scales: torch.Tensor, rows: int, group_size: int | None) -> torch.Tensor:
    """One scale per scale group -> one per row (the layout :func:`weight_scales` returns)."""
    if group_size is None:
        return scales
    if group_size == -1:
        return scales.expand(rows)
    return scales.repeat_interleave(group_size)[:rows]


def weight_scales(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Max-abs scales, one per row (expanded to rows): shape ``[out]``.

    All-zero rows (or groups) get scale 1.0, so they quantize to exact zeros instead of NaN.
    """
    check_bits(bits)
    check_group_size(group_size)
    w = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1)
    rows = w.shape[0]
    if group_size == -1:
        w = expand_scales(w.amax().reshape(1), rows, group_size)
    elif group_size is not None and group_size > 1:
        pad = (-rows) % group_size
        padded = torch.cat([w, w.new_zeros(pad)]) if pad else w
        w = expand_scales(padded.reshape(-1, group_size).amax(dim=1), rows, group_size)
    scale = w / qmax(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)


def fake_quantize(
    weight: torch.Tensor,
    bits: int,
    scale: torch.Tensor | None = None,
    group_size: int | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``weight`` to the symmetric ``bits``-bit grid, row-wise scales.

    Args:
        weight: ``[out, ...]`` tensor; the first dimension holds output channels.
        bits: 2..8.
        scale: per-row scales ``[out]`` (or a scalar); computed from max-abs when ``None``.
        group_size: ``None`` (per row), ``-1`` (per tensor) or rows per shared scale.

    Returns:
        A tensor of the same shape and dtype whose values are ``q * scale`` with integer ``q``.
        Rounding has a straight-through gradient; values clamped by a given scale get none, as in
        ``torch.fake_quantize_per_channel_affine``, which this equals for the same scales.
    """
    check_bits(bits)
    if scale is None:
        scale = weight_scales(weight, bits, group_size)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=weight.device)
    if scale.dim() == 0:
        scale = scale.expand(weight.shape[0])
    shape = (-1,) + (1,) * (weight.dim() - 1)
    s = scale.reshape(shape).detach()
    # multiply by the reciprocal, as torch's fake-quant kernels do, so both round identically
    q = torch.clamp(round_ste(weight.float() * (1.0 / s)), -qmax(bits), qmax(bits))
    return (q * s).to(weight.dtype)


def quantize_to_int(
    weight: torch.Tensor, bits: int, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer codes (int8 tensor) and per-row scales ``[out]`` of ``weight``."""
    scale = weight_scales(weight, bits, group_size)
    q = torch.clamp(torch.round(weight.detach().float() * (1.0 / scale[:, None])), -qmax(bits), qmax(bits))
    return q.to(torch.int8), scale


def fake_quantize_activations(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Dynamic per-token symmetric fake-quantization of activations (last dim = features)."""
    check_bits(bits)
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    s = torch.where(amax > 0, amax / qmax(bits), torch.ones_like(amax))
    q = torch.clamp(round_ste(x.float() * (1.0 / s)), -qmax(bits), qmax(bits))
    return (q * s).to(x.dtype)


def fp16_round_ste(weight: torch.Tensor) -> torch.Tensor:
    """Round to float16 storage and back, straight-through."""
    return weight + (weight.detach().half().to(weight.dtype) - weight.detach())

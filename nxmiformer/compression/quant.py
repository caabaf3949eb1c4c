"""Symmetric signed integer fake-quantization with a straight-through estimator.

Granularity of the weight scales (``group_size``):

=============  ==========================================================
``None``       one scale per output row (per channel), the default
``g > 0``      ``g`` consecutive output rows share one scale
``-1``         one scale for the whole tensor
=============  ==========================================================

The integer grid for ``b`` bits is ``[-(2^(b-1)-1), 2^(b-1)-1]`` (symmetric: -2^(b-1) is never
used, so zero-point is always 0). How a scale group's scale is chosen (``SCALE_METHODS``):

=========  =================================================================================
``max``    max-abs of the group / qmax: nothing is clipped
``mse``    ``clip * max-abs / qmax`` with the clip ratio in (0, 1] that minimises the group's
           squared quantization error (:func:`fit_clip`, a vectorised grid search)
``lsq``    ``mse`` for projections; after hardening the scale is a trained parameter with the
           LSQ gradient (:func:`lsq_quantize`), capped at max-abs / qmax
=========  =================================================================================

Every method keeps a scale at most max-abs / qmax, so the largest kept value of each group sits on
``+-qmax``: the scale of a hardened weight can always be read back from its max-abs (the packed
format stores no other information).
"""

from __future__ import annotations

import math

import torch

from ..errors import NxmiError

INT_BITS = tuple(range(2, 9))
SCALE_METHODS = ("max", "mse", "lsq")
# fit_clip: a coarse grid over (0, 1], then a fine grid around the coarse optimum
_COARSE_CLIPS = 20
_FINE_CLIPS = 12


class _RoundSTE(torch.autograd.Function):
    """Round half to even in the forward pass; identity gradient (straight-through)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad


class _GradScale(torch.autograd.Function):
    """Identity in the forward pass (bit for bit); gradient multiplied by ``factor``."""

    @staticmethod
    def forward(ctx, x, factor):  # noqa: D102
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad * ctx.factor, None


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


def group_first_rows(rows: int, group_size: int | None) -> torch.Tensor:
    """Index of the first row of every scale group: where a row-expanded scale tensor holds each
    group's one scale (what the packed format stores and ``lsq`` trains)."""
    if group_size is None:
        return torch.arange(rows)
    if group_size == -1:
        return torch.zeros(1, dtype=torch.long)
    return torch.arange(0, rows, group_size)


def check_scale_method(method: str) -> None:
    if method not in SCALE_METHODS:
        raise NxmiError(f"scale method must be one of {', '.join(SCALE_METHODS)}, got {method!r}")


def _group_reduce(per_row: torch.Tensor, group_size: int | None, op: str) -> torch.Tensor:
    """Reduce a per-row quantity over scale groups (``op`` = "amax" or "sum"), expanded to rows."""
    rows = per_row.shape[0]
    if group_size is None or group_size == 1:
        return per_row
    if group_size == -1:
        return expand_scales(getattr(per_row, op)().reshape(1), rows, group_size)
    pad = (-rows) % group_size
    padded = torch.cat([per_row, per_row.new_zeros(pad)]) if pad else per_row
    return expand_scales(getattr(padded.reshape(-1, group_size), op)(dim=1), rows, group_size)


def group_maxabs(weight: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Max-abs of every scale group, one value per row ``[out]``."""
    w = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1)
    return _group_reduce(w, group_size, "amax")


def weight_scales(
    weight: torch.Tensor, bits: int, group_size: int | None = None, clip: torch.Tensor | None = None
) -> torch.Tensor:
    """Scales ``clip * max-abs / qmax``, one per row (expanded to rows): shape ``[out]``.

    ``clip`` (per row, in (0, 1]; ``None`` = 1) comes from :func:`fit_clip`. All-zero rows (or
    groups) get scale 1.0, so they quantize to exact zeros instead of NaN.
    """
    check_bits(bits)
    check_group_size(group_size)
    w = group_maxabs(weight, group_size)
    if clip is not None:
        w = w * clip.to(w.device, w.dtype)
    scale = w / qmax(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)


def _clip_errors(w: torch.Tensor, maxabs: torch.Tensor, clips: torch.Tensor, bits: int,
                 group_size: int | None) -> torch.Tensor:
    """Squared quantization error of every scale group for every clip ratio: ``[len(clips), out]``
    (per row, each row holding its group's total)."""
    q = qmax(bits)
    errors = []
    for c in clips:  # one row of candidates per iteration: memory stays at one weight's size
        scale = (c * maxabs / q).clamp_min(torch.finfo(torch.float32).tiny)[:, None]
        err = (torch.clamp(torch.round(w * (1.0 / scale)), -q, q) * scale - w).pow_(2).sum(dim=1)
        errors.append(_group_reduce(err, group_size, "sum"))
    return torch.stack(errors)


@torch.no_grad()
def fit_clip(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """MSE-optimal clip ratio of every scale group, one value per row ``[out]`` in (0, 1].

    Minimises ``||quantize(w, clip * max-abs / qmax) - w||^2`` per scale group: a grid of
    ``_COARSE_CLIPS`` ratios over (0, 1], then ``_FINE_CLIPS`` around the best coarse one. Zeros
    (pruned weights) quantize exactly and do not change the result. Ties keep the larger ratio.
    """
    check_bits(bits)
    check_group_size(group_size)
    w = weight.detach().reshape(weight.shape[0], -1).float()
    maxabs = group_maxabs(w, group_size)
    coarse = torch.linspace(1.0, 1.0 / _COARSE_CLIPS, _COARSE_CLIPS, device=w.device)
    best = coarse[_clip_errors(w, maxabs, coarse, bits, group_size).argmin(dim=0)]  # [out]
    step = 1.0 / _COARSE_CLIPS
    offsets = torch.linspace(step, -step, _FINE_CLIPS + 2, device=w.device)[1:-1]
    fine = (best[None, :] + offsets[:, None]).clamp(step / _FINE_CLIPS, 1.0)  # [fine, out]
    candidates = torch.cat([best[None, :], fine])
    pick = _clip_errors(w, maxabs, candidates, bits, group_size).argmin(dim=0)  # argmin returns the first minimum: the coarse best on ties
    return candidates.gather(0, pick[None, :])[0]


def mse_scales(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Scales with the MSE-optimal clip ratio (:func:`fit_clip`), one per row ``[out]``."""
    return weight_scales(weight, bits, group_size, clip=fit_clip(weight, bits, group_size))


def projection_scales(weight: torch.Tensor, bits: int, group_size: int | None, method: str) -> torch.Tensor:
    """The scales a projection onto the grid uses under scale ``method`` (``lsq`` projects with
    ``mse`` scales: its trained scale starts from them)."""
    check_scale_method(method)
    if method == "max":
        return weight_scales(weight, bits, group_size)
    return mse_scales(weight, bits, group_size)


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


def lsq_quantize(
    weight: torch.Tensor, bits: int, scale: torch.Tensor, group_size: int | None = None
) -> torch.Tensor:
    """Fake-quantize with a trained scale and the LSQ gradient (Esser et al., 2020).

    Args:
        weight: ``[out, in]``.
        bits: 2..8.
        scale: one trained scale per scale group (``num_scales(out, group_size)`` values).
        group_size: as for :func:`fake_quantize`.

    The scale used is ``min(scale, max-abs / qmax)`` per group, so the group's largest value
    always lands on ``+-qmax`` (the packed format reads scales back from max-abs). Gradients: the
    weight's is straight-through inside the clipping range and zero outside it; the scale's is
    LSQ's ``round(w/s) - w/s`` inside and ``+-qmax`` outside, multiplied by
    ``1 / sqrt(values per group * qmax)``.
    """
    check_bits(bits)
    q = qmax(bits)
    rows = weight.shape[0]
    per_group = weight[0].numel() * (rows if group_size == -1 else (group_size or 1))
    grad_scale = 1.0 / math.sqrt(per_group * q)
    s = expand_scales(_GradScale.apply(scale, grad_scale), rows, group_size)
    cap = group_maxabs(weight, group_size) / q
    s = torch.minimum(s, torch.where(cap > 0, cap, torch.ones_like(cap))).clamp_min(1e-12)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    s = s.reshape(shape)
    # clamp before rounding (same values): the gradients then follow LSQ's definition of the range
    x = torch.clamp(weight.float() / s, -q, q)
    return (round_ste(x) * s).to(weight.dtype)


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

"""Model surgery: wrap planned ``nn.Linear`` layers so their forward uses the N:M-masked,
fake-quantized weight; harden them onto the constraint set; turn them back into plain linears."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .masks import nm_mask
from .modules import compressible_modules
from .quant import (
    fake_quantize, fake_quantize_activations, fit_clip, fp16_round_ste, group_first_rows, lsq_quantize,
    projection_scales, qmax, weight_scales,
)
from .spec import CompressionPlan, LayerSpec


def project(weight: torch.Tensor, spec: LayerSpec, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean-style projection used by ADMM's Z-step and by hardening: keep the N:M largest
    magnitudes (or the given ``mask``), then put the kept values on the spec's grid, with the
    scales of the spec's scale method (max-abs, or the MSE-optimal clip for ``mse`` and ``lsq``)."""
    w = weight.detach()
    if spec.is_sparse:
        w = w * (nm_mask(w, spec.n, spec.m) if mask is None else mask)
    scale = projection_scales(w, spec.bits, spec.group_size, spec.scale_method) if spec.is_integer else None
    return _quantize(w, spec, scale)


def _quantize(w: torch.Tensor, spec: LayerSpec, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``w`` on the spec's grid: integer specs with ``scale`` (default max-abs), fp16 rounding."""
    if spec.is_integer:
        return fake_quantize(w, spec.bits, scale=scale, group_size=spec.group_size)
    if spec.bits == 16:
        return fp16_round_ste(w)
    return w


class _SoftNMQuant(torch.autograd.Function):
    """``quantize(W * nm_mask(W))`` with a straight-through gradient to the dense ``W``.

    The same values as composing :func:`nm_mask` and :func:`fake_quantize` with STE, in one
    autograd node instead of about ten: this is what keeps a compressed training step close to a
    dense one (``bench/step_overhead.py``).
    """

    @staticmethod
    def forward(ctx, weight, n, m, bits, group_size, clip):  # noqa: D102
        masked = torch.where(nm_mask(weight, n, m), weight, 0.0)
        scale = weight_scales(masked, bits, group_size, clip=clip)[:, None]
        return torch.clamp(torch.round(masked * (1.0 / scale)), -qmax(bits), qmax(bits)).mul_(scale)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad, None, None, None, None, None


class CompressedLinear(nn.Linear):
    """An ``nn.Linear`` whose forward uses ``quantize(W * mask)``.

    Before hardening the N:M mask follows the weights (recomputed each forward) and the gradient
    passes straight through both the mask and the rounding to the dense weight, so ADMM's penalty
    and the task loss can move pruned weights back in. After :func:`harden_` the mask is frozen:
    pruned weights get no gradient and the effective weight stays exactly N:M.

    Integer scales: before hardening, ``clip * max-abs / qmax`` per scale group, where the clip
    ratios (buffer ``clip``, 1 for ``max``) are fitted by :meth:`refit_clip` (at wrapping and,
    during ADMM, at every Z-step). Hardening writes weights projected with the spec's scales; after
    it, ``mse`` and ``max`` use the max-abs of the hardened weights (whose largest value is the
    clipped one), and ``lsq`` trains the scale (parameter ``scale``, one per scale group).

    It subclasses ``nn.Linear`` and keeps the original ``weight``/``bias`` parameters, so state-dict
    keys, optimizers that already hold the parameters, and ``isinstance`` checks are unaffected.
    """

    def __init__(self, linear: nn.Linear, spec: LayerSpec):
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.spec = spec
        self.hardened = False
        self.register_buffer("mask", None, persistent=False)
        self.register_buffer("clip", None, persistent=False)
        self.scale = None
        self.refit_clip()

    @torch.no_grad()
    def refit_clip(self) -> None:
        """Fit the clip ratios of the soft phase to the current (N:M-masked) weights: the MSE-optimal
        ratio per scale group for ``mse``/``lsq`` specs, none for ``max`` and float specs."""
        spec = self.spec
        if self.hardened or spec.scale_method not in ("mse", "lsq"):
            self.clip = None
            return
        w = self.weight.detach()
        if spec.is_sparse:
            w = w * nm_mask(w, spec.n, spec.m)
        self.clip = fit_clip(w, spec.bits, spec.group_size)

    def extra_repr(self) -> str:
        state = "hardened" if self.hardened else "soft"
        return f"{super().extra_repr()}, spec={self.spec}, {state}"

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        spec = self.spec
        if spec.is_sparse and spec.is_integer and not self.hardened and w.dtype == torch.float32:
            return _SoftNMQuant.apply(w, spec.n, spec.m, spec.bits, spec.group_size, self.clip)
        if spec.is_sparse:
            if self.hardened:
                w = w * self.mask
            else:
                mask = nm_mask(w, spec.n, spec.m)
                w = w + (w.detach() * mask - w.detach())  # straight-through mask
        if self.scale is not None:
            return lsq_quantize(w, spec.bits, self.scale, spec.group_size)
        clip = None if self.hardened else self.clip
        return _quantize(w, spec, weight_scales(w, spec.bits, spec.group_size, clip) if spec.is_integer else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.act_bits is not None:
            x = fake_quantize_activations(x, self.spec.act_bits)
        return F.linear(x, self.effective_weight(), self.bias)

    @torch.no_grad()
    def harden(self, mask: torch.Tensor | None = None, project_weights: bool = True) -> None:
        """Freeze the mask (from the current weights, or the given one) and write the projected
        weights into ``weight``: exactly N:M sparse and exactly on the integer grid.

        ``project_weights=False`` only freezes the mask (to restore a checkpoint whose weights
        are loaded afterwards)."""
        spec = self.spec
        if spec.is_sparse:
            self.mask = nm_mask(self.weight, spec.n, spec.m) if mask is None else mask.to(self.weight.device, torch.bool)
        else:
            self.mask = None
        if project_weights:
            self.weight.copy_(project(self.weight, spec, self.mask))
        self.hardened = True
        self.clip = None
        if spec.scale_method == "lsq":
            # start from the projection's scales: max-abs of the projected weights is clip * max-abs
            per_row = weight_scales(self.weight if self.mask is None else self.weight * self.mask,
                                    spec.bits, spec.group_size)
            self.scale = nn.Parameter(per_row[group_first_rows(self.out_features, spec.group_size)].clone())
        else:
            self.scale = None

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the effective weight."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.effective_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trained (``lsq``) scales of the hardened wrappers in ``model``."""
    return [m.scale for m in compressed_modules(model).values() if m.scale is not None]


@torch.no_grad()
def refit_clips_(model: nn.Module) -> nn.Module:
    """Refit the soft-phase clip ratios of every wrapped module to its current weights."""
    for module in compressed_modules(model).values():
        module.refit_clip()
    return model


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def compress_(model: nn.Module, plan: CompressionPlan) -> nn.Module:
    """Wrap every module the plan names (and whose spec changes anything) in place; return model.

    Re-applying replaces the specs of already-wrapped modules.
    """
    plan.validate(model)
    for cm in compressible_modules(model):
        spec = plan.spec_for(cm.name)
        module = cm.module
        if isinstance(module, CompressedLinear):
            if spec.is_identity:
                set_submodule(model, cm.name, module.to_linear())
            else:
                module.spec, module.hardened, module.mask, module.scale = spec, False, None, None
                module.refit_clip()
        elif not spec.is_identity:
            set_submodule(model, cm.name, CompressedLinear(module, spec))
    return model


def compressed_modules(model: nn.Module) -> dict[str, CompressedLinear]:
    """Name -> wrapper for every :class:`CompressedLinear` in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CompressedLinear)}


@torch.no_grad()
def harden_(
    model: nn.Module, masks: dict[str, torch.Tensor] | None = None, project_weights: bool = True
) -> nn.Module:
    """Project every wrapped module's weights onto its constraint set and freeze its mask
    (``masks`` gives frozen masks by module name instead of computing them)."""
    masks = masks or {}
    for name, module in compressed_modules(model).items():
        module.harden(masks.get(name), project_weights=project_weights)
    return model


def to_dense_(model: nn.Module) -> nn.Module:
    """Replace wrappers by plain ``nn.Linear`` layers holding their effective weights, so that
    ``save_pretrained`` writes an ordinary checkpoint."""
    for name, module in compressed_modules(model).items():
        set_submodule(model, name, module.to_linear())
    return model


def current_plan(model: nn.Module) -> CompressionPlan:
    """The plan that the model's wrappers carry."""
    return CompressionPlan({name: m.spec for name, m in compressed_modules(model).items()})

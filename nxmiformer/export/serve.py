"""Serving hardened models with integer kernels that PyTorch ships for CPU.

:func:`to_int8_weight_only_` replaces every hardened 8-bit module (``dense:int8``, ``2:4:int8``,
... with one scale per output row) by an :class:`Int8WeightOnlyLinear`: the weight is held as
``int8`` values plus one float scale per row -- a quarter of the fp32 memory -- and the forward is
``torch._weight_int8pack_mm`` (the kernel torchao uses for int8 weight-only CPU inference). Since
hardening already put the weights on exactly that grid, the function is unchanged up to float
rounding. N:M zeros are stored as zeros: PyTorch has no sparse-int8 CPU kernel, so sparsity does
not make this faster.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import NxmiError
from ..compression.layer import CompressedLinear, set_submodule, compressed_modules
from ..compression.quant import quantize_to_int
from ..compression.spec import LayerSpec


def supports_int8_weight_only(spec: LayerSpec) -> bool:
    """8-bit integer weights with per-row scales (any N:M)."""
    return spec.bits == 8 and spec.group_size is None and spec.act_bits is None


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (q * scale[:, None]).T + bias`` with ``q`` int8, through ``torch._weight_int8pack_mm``."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("q", q.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())

    @classmethod
    def from_compressed(cls, module: CompressedLinear) -> "Int8WeightOnlyLinear":
        if not module.hardened:
            raise NxmiError("int8 serving needs a hardened module: call harden_(model) first")
        if not supports_int8_weight_only(module.spec):
            raise NxmiError(f"int8 weight-only serving needs 8-bit weights with per-row scales, got spec {module.spec}")
        weight = module.effective_weight().detach().float()
        q, scales = quantize_to_int(weight, 8)
        return cls(q, scales, module.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).float().contiguous(), self.q, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


@torch.no_grad()
def to_int8_weight_only_(model: nn.Module) -> list[str]:
    """Swap every hardened module with an int8-servable spec for :class:`Int8WeightOnlyLinear`, in
    place; return the names swapped (other modules are left as they are)."""
    swapped = []
    for name, module in compressed_modules(model).items():
        if module.hardened and supports_int8_weight_only(module.spec):
            set_submodule(model, name, Int8WeightOnlyLinear.from_compressed(module))
            swapped.append(name)
    return swapped


__all__ = ["Int8WeightOnlyLinear", "supports_int8_weight_only", "to_int8_weight_only_"]

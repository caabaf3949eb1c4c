"""Encoder compression-ratio accounting under the two conventions of DESIGN.md.

``ratio = 1 - compressed_bits / dense_bits`` over the encoder's compressible ``nn.Linear``
weights (biases, embeddings, pooler and classifier are not counted), dense = 32-bit floats.

* ``paper``: kept values only; N:M with ``b`` bits costs ``(N/M) * b`` bits per weight.
* ``storage``: what a packed file holds: kept values, N:M index metadata
  (``ceil(log2(M))`` bits per kept value; 2 for 2:4) and one 16-bit scale per scale group.
"""

from __future__ import annotations

import math

import pandas as pd
from torch import nn

from ..errors import NxmiError
from .modules import compressible_modules
from .quant import num_scales
from .spec import CompressionPlan, LayerSpec

CONVENTIONS = ("paper", "storage")
SCALE_BITS = 16
DENSE_BITS = 32


def index_bits(m: int) -> int:
    """Metadata bits per kept value of an N:M pattern (0 when dense)."""
    return 0 if m <= 1 else math.ceil(math.log2(m))


def module_bits(spec: LayerSpec, out_features: int, in_features: int, convention: str = "paper") -> float:
    """Compressed size in bits of one ``[out, in]`` weight under ``spec``."""
    check_convention(convention)
    numel = out_features * in_features
    kept = numel * spec.n / spec.m
    bits = kept * spec.bits
    if convention == "storage":
        if spec.is_sparse:
            bits += kept * index_bits(spec.m)
        if spec.is_integer:
            bits += num_scales(out_features, spec.group_size) * SCALE_BITS
    return bits


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise NxmiError(f"unknown ratio convention {convention!r}; allowed: {', '.join(CONVENTIONS)}")


def ratio_table(model: nn.Module, plan: CompressionPlan) -> pd.DataFrame:
    """One row per compressible module: layer, component, spec, sparsity, bits, and its size in
    bits under both conventions (``paper_bits``, ``storage_bits``) next to ``dense_bits``."""
    rows = []
    for cm in compressible_modules(model):
        spec = plan.spec_for(cm.name)
        rows.append(
            {
                "module": cm.name,
                "layer": cm.layer,
                "component": cm.component,
                "shape": f"{cm.out_features}x{cm.in_features}",
                "spec": str(spec),
                "sparsity": 1.0 - spec.density,
                "bits": spec.bits,
                "dense_bits": cm.numel * DENSE_BITS,
                "paper_bits": module_bits(spec, cm.out_features, cm.in_features, "paper"),
                "storage_bits": module_bits(spec, cm.out_features, cm.in_features, "storage"),
            }
        )
    return pd.DataFrame(rows)


def compression_ratio(model: nn.Module, plan: CompressionPlan, convention: str = "paper") -> float:
    """Encoder compression ratio of ``plan`` on ``model`` (``paper`` or ``storage``)."""
    check_convention(convention)
    table = ratio_table(model, plan)
    return float(1.0 - table[f"{convention}_bits"].sum() / table["dense_bits"].sum())

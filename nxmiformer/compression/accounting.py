"""Encoder compression-ratio accounting under its two conventions (docs/design.md, "Accounting").

``ratio = 1 - compressed_bits / dense_bits`` over the encoder's compressible ``nn.Linear``
weights (biases, embeddings, pooler and classifier are not counted), dense = 32-bit floats.

* ``paper``: kept values only; N:M with ``b`` bits costs ``(N/M) * b`` bits per weight.
* ``storage``: what a packed file holds: kept values, N:M index metadata
  (``ceil(log2(M))`` bits per kept value; 2 for 2:4) and one 16-bit scale per scale group.

A constraint on the ratio is a :class:`RatioTarget` (value + convention); every layer that asks
whether a plan, a candidate or a trial meets it asks the target, with its one tolerance.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

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


def check_convention(convention: str) -> str:
    """``convention`` if it is one of :data:`CONVENTIONS`, else an error naming the allowed ones."""
    if convention not in CONVENTIONS:
        raise NxmiError(f"unknown ratio convention {convention!r}; allowed: {', '.join(CONVENTIONS)}")
    return convention


def dense_bits(modules) -> float:
    """Bits of the compressible weights as 32-bit floats: of a model's compressible linears, of
    a table with ``out_features`` and ``in_features`` columns (one row per module), or given."""
    if isinstance(modules, numbers.Real):
        return float(modules)
    if isinstance(modules, nn.Module):
        return float(sum(cm.numel for cm in compressible_modules(modules)) * DENSE_BITS)
    return float((modules["out_features"].astype("int64") * modules["in_features"].astype("int64")).sum() * DENSE_BITS)


@dataclass(frozen=True)
class RatioTarget:
    """A least encoder compression ratio under one convention: the constraint of a search.

    ``is_met`` and ``budget_bits`` share one absolute tolerance on the ratio,
    :attr:`TOLERANCE`, so that exact hits (uniform 2:4:int8 at 0.875 paper) meet the target
    whether the check is made on a ratio or on summed bits.

    Raises:
        NxmiError: a value outside (0, 1) or an unknown convention.
    """

    value: float
    convention: str = "paper"
    TOLERANCE: ClassVar[float] = 1e-9

    @classmethod
    def of(cls, target: "RatioTarget | float", convention: str = "paper") -> "RatioTarget":
        """``target`` itself if it is a :class:`RatioTarget`, else ``RatioTarget(target, convention)``."""
        return target if isinstance(target, cls) else cls(target, convention)

    def __post_init__(self):
        value = self.value
        if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and 0 < value < 1):
            raise NxmiError(f"target ratio must be a number in (0, 1), got {value!r}")
        object.__setattr__(self, "value", float(value))
        check_convention(self.convention)

    @property
    def column(self) -> str:
        """The results column of this target's convention: ``ratio_paper`` or ``ratio_storage``."""
        return f"ratio_{self.convention}"

    def is_met(self, ratio):
        """Whether a ratio (under this target's convention) meets the target; NaN never does.
        Element-wise for an array or Series of ratios."""
        return ratio >= self.value - self.TOLERANCE

    def budget_bits(self, modules) -> float:
        """The most compressed bits the modules (a model, a modules table or their dense bits; see
        :func:`dense_bits`) may take under this convention: a plan meets the target iff its
        summed :func:`module_bits` are at most this."""
        return (1.0 - self.value + self.TOLERANCE) * dense_bits(modules)

    def check_reachable(self, highest: float, how: str = "") -> float:
        """``highest`` (the best ratio the options can reach) if it meets the target, else an
        error naming it; ``how`` says how it is reached (e.g. every module at its cheapest)."""
        if self.is_met(highest):
            return highest
        shown = f"{highest:.4f}"
        if float(shown) >= self.value:  # rounding must not make the reachable look like enough
            shown = f"{highest:.12g}"
        raise NxmiError(f"target ratio {self.value:g} ({self.convention}) is infeasible with this menu: the highest "
                        f"reachable is {shown}{f' ({how})' if how else ''}; lower the target or add cheaper options")

    def __str__(self) -> str:
        return f"{self.value:g} ({self.convention})"


MAX_TARGETS = 12


def parse_targets(value) -> tuple[float, ...]:
    """The search's targets, lowest first, without repeats: a number, a sequence of numbers, or text:
    ``0.875``, ``0.875,0.9375`` or ``LOW:HIGH:COUNT`` (COUNT evenly spaced ratios from LOW to HIGH).
    A bad value is a one-line error naming it and the forms allowed."""
    forms = "a ratio in (0, 1), a list such as 0.875,0.9375,0.96875, or LOW:HIGH:COUNT such as 0.85:0.97:6"
    values = value
    if isinstance(value, str):
        text = value.strip()
        try:
            if ":" in text:
                low, high, count = text.split(":")
                low, high, count = float(low), float(high), int(count)
                if count < 2 or not low < high:
                    raise ValueError
                values = [round(low + (high - low) * k / (count - 1), 10) for k in range(count)]
            else:
                values = [float(v) for v in text.split(",")]
        except ValueError:
            raise NxmiError(f"bad target ratio {value!r}; allowed: {forms}") from None
    elif not isinstance(value, (list, tuple)):
        values = [value]
    if not values:
        raise NxmiError(f"bad target ratio {value!r}; allowed: {forms}")
    for v in values:
        RatioTarget(v)  # a number in (0, 1), else its error
    targets = tuple(sorted({float(v) for v in values}))
    if len(targets) > MAX_TARGETS:
        raise NxmiError(f"{len(targets)} target ratios in {value!r}; at most {MAX_TARGETS} in one search")
    return targets


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

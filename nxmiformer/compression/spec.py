"""Per-module compression specs and whole-model compression plans."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import NxmiError
from .masks import check_nm
from .modules import ALL_COMPONENTS, compressible_modules
from .quant import INT_BITS, SCALE_METHODS, check_group_size

PLAN_SCHEMA = "nxmiformer.plan"
PLAN_VERSION = 1
ALLOWED_BITS = INT_BITS + (16, 32)
_DTYPES = {f"int{b}": b for b in INT_BITS} | {"fp16": 16, "fp32": 32}
# The scale method an integer spec uses when its string names none, per bit width: chosen by
# measurement (bench/recovery.py, docs/decisions.md): lsq was best or tied with
# ADMM+QAT at 8, 4 and 2 bits, and its one-shot projection (mse) beat max-abs at every width
# (3, 5, 6 and 7 bits were not measured and follow their neighbours).
DEFAULT_SCALE_METHOD = {bits: "lsq" for bits in INT_BITS}


@dataclass(frozen=True)
class LayerSpec:
    """How one ``nn.Linear`` is compressed.

    Attributes:
        n, m: keep ``n`` of every ``m`` consecutive input weights (NVIDIA's ``2:4``); ``n == m``
            means no sparsity and is stored as ``1:1``.
        bits: 2..8 for symmetric signed integers, 16 for float16 storage, 32 for unchanged floats.
        act_bits: ``None`` or 2..8: dynamic per-token fake-quantization of the layer's input, for
            integer compute (only with integer weights).
        group_size: weight scale granularity for integer bits: ``None`` one scale per output row,
            ``-1`` one per tensor, ``g`` one per ``g`` rows.
        scale: how integer scales are chosen: ``"max"`` (max-abs), ``"mse"`` (MSE-optimal clip),
            ``"lsq"`` (MSE at projections, then trained after hardening), or ``None`` for the
            bit width's default (:data:`DEFAULT_SCALE_METHOD`; :attr:`scale_method` resolves it).

    String form (round-trips through :meth:`parse` and ``str``)::

        spec     := sparsity [":" dtype] [":a" BITS] [":g" ROWS | ":gtensor"] [":" scale]
        sparsity := N ":" M | "dense"          (1 <= N <= M <= 32; N == M means dense)
        dtype    := "int2" .. "int8" | "fp16" | "fp32"
        scale    := "max" | "mse" | "lsq"      (integer dtypes only)

    e.g. ``"2:4:int8"``, ``"4:8:int4:lsq"``, ``"dense:int8:g64"``, ``"2:4:fp16"``, ``"dense"``.
    """

    n: int = 1
    m: int = 1
    bits: int = 32
    act_bits: int | None = None
    group_size: int | None = None
    scale: str | None = None

    def __post_init__(self):
        check_nm(self.n, self.m)
        if self.n == self.m and self.m != 1:
            object.__setattr__(self, "n", 1)
            object.__setattr__(self, "m", 1)
        if isinstance(self.bits, bool) or self.bits not in ALLOWED_BITS:
            raise NxmiError(f"bits must be one of 2..8 (integer), 16 (fp16) or 32 (fp32), got bits={self.bits!r}")
        if self.act_bits is not None:
            if isinstance(self.act_bits, bool) or self.act_bits not in INT_BITS:
                raise NxmiError(f"act_bits must be None or one of 2..8, got act_bits={self.act_bits!r}")
            if not self.is_integer:
                raise NxmiError(f"act_bits={self.act_bits} needs integer weights (bits 2..8), got bits={self.bits}")
        if self.group_size is not None:
            check_group_size(self.group_size)
            if not self.is_integer:
                raise NxmiError(f"group_size={self.group_size} applies to integer bits only, got bits={self.bits}")
        if self.scale is not None:
            if self.scale not in SCALE_METHODS:
                raise NxmiError(f"scale must be one of {', '.join(SCALE_METHODS)} or None, got scale={self.scale!r}")
            if not self.is_integer:
                raise NxmiError(f"scale={self.scale} applies to integer bits only, got bits={self.bits}")

    @property
    def scale_method(self) -> str | None:
        """The scale method in effect (``None`` for float specs)."""
        if not self.is_integer:
            return None
        return self.scale or DEFAULT_SCALE_METHOD[self.bits]

    @property
    def is_sparse(self) -> bool:
        return self.n < self.m

    @property
    def is_integer(self) -> bool:
        return self.bits <= 8

    @property
    def is_identity(self) -> bool:
        """True when the spec changes nothing (dense fp32)."""
        return not self.is_sparse and self.bits == 32

    @property
    def density(self) -> float:
        return self.n / self.m

    @property
    def bits_per_weight(self) -> float:
        """``density * bits``: the ``paper`` cost per weight (2:4:int8 is 4, dense:int8 is 8)."""
        return self.density * self.bits

    @classmethod
    def parse(cls, text: "str | LayerSpec") -> "LayerSpec":
        """Parse the compact string form; see the class docstring."""
        if isinstance(text, LayerSpec):
            return text
        if not isinstance(text, str) or not text.strip():
            raise NxmiError(f"spec must be a string like '2:4:int8', got {text!r}")
        allowed = ("'N:M[:intB|fp16|fp32][:aB][:gG|gtensor][:max|mse|lsq]' or 'dense[:...]', "
                   "e.g. '2:4:int8', 'dense:int4', '2:4:int4:lsq'")
        tokens = text.strip().lower().split(":")
        try:
            if tokens[0] == "dense":
                n = m = 1
                rest = tokens[1:]
            else:
                n, m = int(tokens[0]), int(tokens[1])
                rest = tokens[2:]
        except (ValueError, IndexError):
            raise NxmiError(f"malformed spec {text!r}: expected {allowed}") from None
        bits, act_bits, group_size, scale = 32, None, None, None
        for i, token in enumerate(rest):
            if i == 0 and token in _DTYPES:
                bits = _DTYPES[token]
            elif i == 0 and token[:3] in ("int",) and token[3:].isdigit():
                bits = int(token[3:])  # out of range: LayerSpec names the allowed bits
            elif i == 0 and token[:2] == "fp" and token[2:].isdigit():
                bits = int(token[2:])
            elif token.startswith("a") and token[1:].isdigit():
                act_bits = int(token[1:])
            elif token == "gtensor":
                group_size = -1
            elif token in SCALE_METHODS:
                scale = token
            elif token.startswith("g") and token[1:].isdigit():
                group_size = int(token[1:])
            else:
                raise NxmiError(
                    f"malformed spec {text!r}: unknown part {token!r}; expected {allowed} "
                    f"(dtypes: {', '.join(_DTYPES)})"
                )
        return cls(n=n, m=m, bits=bits, act_bits=act_bits, group_size=group_size, scale=scale)

    def __str__(self) -> str:
        parts = ["dense" if not self.is_sparse else f"{self.n}:{self.m}"]
        if self.bits != 32 or self.act_bits is not None or self.group_size is not None or self.scale is not None:
            parts.append(f"int{self.bits}" if self.is_integer else f"fp{self.bits}")
        if self.act_bits is not None:
            parts.append(f"a{self.act_bits}")
        if self.group_size is not None:
            parts.append("gtensor" if self.group_size == -1 else f"g{self.group_size}")
        if self.scale is not None:
            parts.append(self.scale)
        if parts == ["dense", "fp32"]:
            return "dense"
        return ":".join(parts)


DENSE = LayerSpec()


def _coerce(spec: "str | LayerSpec | Mapping") -> LayerSpec:
    if isinstance(spec, Mapping):
        return LayerSpec(**spec)
    return LayerSpec.parse(spec)


class CompressionPlan(Mapping):
    """Module name -> :class:`LayerSpec`. Modules a plan does not name stay dense.

    A plan is a read-only mapping; ``meta`` carries free-form provenance (task, search trial...)
    that is saved with it.
    """

    def __init__(self, specs: Mapping[str, "str | LayerSpec"] | None = None, meta: Mapping[str, Any] | None = None):
        self._specs = {str(name): _coerce(spec) for name, spec in (specs or {}).items()}
        self.meta = dict(meta or {})

    # Mapping protocol
    def __getitem__(self, name: str) -> LayerSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __eq__(self, other) -> bool:
        if not isinstance(other, CompressionPlan):
            return NotImplemented
        return self._specs == other._specs

    def __hash__(self):
        return hash(tuple(sorted((k, str(v)) for k, v in self._specs.items())))

    def __repr__(self) -> str:
        return f"CompressionPlan({self.summary()})"

    def spec_for(self, name: str) -> LayerSpec:
        """The spec of ``name``, dense when the plan does not name it."""
        return self._specs.get(name, DENSE)

    # constructors
    @classmethod
    def uniform(cls, model: nn.Module, spec: "str | LayerSpec") -> "CompressionPlan":
        """The same spec for every compressible module of ``model``."""
        spec = _coerce(spec)
        return cls({cm.name: spec for cm in compressible_modules(model)})

    @classmethod
    def by_component(cls, model: nn.Module, specs: Mapping[str, "str | LayerSpec"]) -> "CompressionPlan":
        """One spec per component type (``query``, ``ffn_in``...), shared across layers.

        Component types not named stay dense. A model with a fused QKV matrix (ModernBERT) has a
        ``qkv`` component instead of ``query``, ``key`` and ``value``: the fused matrix takes one
        spec (see :mod:`.modules`).

        Raises:
            NxmiError: a name that is no component type (naming those allowed); a component this
                model has no module of (naming the components it has); a plan that compresses
                nothing (every named component dense fp32).
        """
        allowed = (*ALL_COMPONENTS, "other")
        unknown = sorted(set(specs) - set(allowed))
        if unknown:
            raise NxmiError(f"unknown component(s) {unknown}; allowed: {', '.join(allowed)}")
        modules = compressible_modules(model)
        present = [c for c in allowed if any(cm.component == c for cm in modules)]
        absent = [c for c in specs if c not in present]
        if absent:
            hint = ""
            if "qkv" in present and {"query", "key", "value"} & set(absent):
                hint = "; query, key and value are one fused matrix per layer here: give 'qkv' one spec"
            elif "qkv" in absent and "query" in present:
                hint = "; query, key and value are separate matrices here: give them their own specs"
            raise NxmiError(f"component(s) {absent} match no module of {type(model).__name__}; "
                            f"its components: {', '.join(present)}{hint}")
        coerced = {c: _coerce(s) for c, s in specs.items()}
        plan = cls({cm.name: coerced[cm.component] for cm in modules if cm.component in coerced})
        return plan.check_compresses(f" of components {', '.join(coerced) or '(none)'} on {type(model).__name__}")

    def check_compresses(self, source: str = "") -> "CompressionPlan":
        """``self``, when some module it names is compressed (a spec other than dense fp32).

        Raises:
            NxmiError: the plan names no module, or gives every module dense fp32 (it would change
                nothing); ``source`` (e.g. ``" in plan.json"``) follows "the plan" in the message.
        """
        if all(spec.is_identity for spec in self._specs.values()):
            given = "names no module" if not self._specs else "gives every module it names dense fp32"
            raise NxmiError(f"the plan{source} compresses nothing: it {given}; "
                            f"give at least one module a spec such as 2:4:int8")
        return self

    # validation
    def validate(self, model: nn.Module) -> "CompressionPlan":
        """Check every named module exists and fits its spec; return ``self``.

        Raises:
            NxmiError: unknown module names (with the closest real names), or a module whose input
                width is not a multiple of its spec's ``m``.
        """
        modules = {cm.name: cm for cm in compressible_modules(model)}
        unknown = [name for name in self._specs if name not in modules]
        if unknown:
            hints = []
            for name in unknown[:5]:
                close = difflib.get_close_matches(name, list(modules), n=2, cutoff=0.5)
                hints.append(f"{name!r} (closest: {', '.join(close) or 'none'})")
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise NxmiError(f"unknown module(s) in plan: {'; '.join(hints)}{more}")
        for name, spec in self._specs.items():
            cm = modules[name]
            if cm.in_features % spec.m:
                raise NxmiError(
                    f"spec {spec} does not fit {name}: its input width {cm.in_features} is not a multiple of m={spec.m}"
                )
        return self

    # (de)serialisation
    def to_dict(self) -> dict:
        return {
            "schema": PLAN_SCHEMA,
            "version": PLAN_VERSION,
            "modules": {name: str(spec) for name, spec in self._specs.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "CompressionPlan":
        if not isinstance(data, Mapping) or data.get("schema") != PLAN_SCHEMA:
            got = data.get("schema") if isinstance(data, Mapping) else type(data).__name__
            raise NxmiError(f"not a compression plan: schema is {got!r}, expected {PLAN_SCHEMA!r}")
        if data.get("version") != PLAN_VERSION:
            raise NxmiError(
                f"unsupported plan version {data.get('version')!r}; this nxmiformer reads version {PLAN_VERSION}"
            )
        modules = data.get("modules")
        if not isinstance(modules, Mapping):
            raise NxmiError("malformed plan: 'modules' must be an object of module name -> spec string")
        return cls(modules, meta=data.get("meta") or {})

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "CompressionPlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NxmiError(f"malformed plan JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CompressionPlan":
        path = Path(path)
        if not path.is_file():
            raise NxmiError(f"plan file not found: {path}")
        return cls.from_json(path.read_text())

    def summary(self) -> str:
        """Compact description: spec -> count, e.g. ``2:4:int8 x30, dense:int8 x6``."""
        counts: dict[str, int] = {}
        for spec in self._specs.values():
            counts[str(spec)] = counts.get(str(spec), 0) + 1
        return ", ".join(f"{s} x{c}" for s, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "empty"

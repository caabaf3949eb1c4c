"""Packed export: real integer and N:M storage of a hardened model, and loading it back.

A packed directory holds

=========================  ===============================================================
``compressed.safetensors`` per compressed module ``<name>.values`` (kept values, bit-packed
                           integers or float16/float32), ``<name>.indices`` (N:M positions,
                           bit-packed, sparse specs only) and ``<name>.scales`` (float32, one
                           per scale group, integer specs only)
``model.safetensors``      every other tensor of the state dict (embeddings, biases,
                           LayerNorm, classifier, modules the plan leaves dense fp32)
``pack.json``              manifest: format + version, per-module spec, shape, tensor bytes and
                           accounted ``storage`` bits
``config.json``            the Hugging Face config
``plan.json``              the compression plan
tokenizer and other files  copied unchanged
=========================  ===============================================================

Encoding of one ``[out, in]`` weight under spec ``n:m:intB``: for every row and every group of
``m`` consecutive inputs, the ``n`` kept positions in increasing order and their values; the
positions are ``ceil(log2(m))``-bit unsigned ints, the values ``q + 2^(B-1)`` (offset binary of
the symmetric integer ``q``) as ``B``-bit unsigned ints, both in row-major order packed into a
little-endian bit stream (:func:`pack_bits`). Dense integer specs store all values and no
positions; float specs store the kept values as float16 (exact: the hardened weight is
fp16-rounded) or float32.

Scales are stored as float32, although the ``storage`` accounting counts 16 bits per scale:
hardened weights are ``q * s`` with a float32 ``s``, and rounding ``s`` to 16 bits would move
every weight by up to 2^-11 of its value, more than the logits tolerance allows. The 16 extra bits
per scale group are reported (:attr:`PackReport.scale_overhead_bytes`), not hidden; they cost
about 1-2.5% of a MiniLM-sized module.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import NxmiError
from ..outputs import atomic_output_dir, read_json, require_free_output
from ..compression.accounting import DENSE_BITS, SCALE_BITS, index_bits, module_bits
from ..compression.layer import CompressedLinear, compress_, harden_
from ..compression.modules import compressible_modules
from ..compression.quant import expand_scales, group_first_rows, num_scales, qmax, weight_scales
from ..compression.spec import CompressionPlan, LayerSpec

PACK_FORMAT = "nxmiformer.packed"
PACK_VERSION = 1
COMPRESSED_FILE = "compressed.safetensors"
REST_FILE = "model.safetensors"
MANIFEST_FILE = "pack.json"
PLAN_FILE = "plan.json"
CONFIG_FILE = "config.json"
# A hardened weight is exactly ``q * s``; allow this fraction of a grid step for float noise.
# Weights that were never hardened miss the grid by up to half a step.
GRID_TOLERANCE = 1e-3
# files of a model directory that packing rewrites or replaces; everything else is copied
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_OWN_FILES = {MANIFEST_FILE, PLAN_FILE, CONFIG_FILE, "model.safetensors.index.json", "pytorch_model.bin.index.json"}


# ----------------------------------------------------------------------------- bit packing


def _check_width(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise NxmiError(f"bit width must be an int in 1..8, got {bits!r}")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that :func:`pack_bits` uses for ``count`` values of ``bits`` bits."""
    return math.ceil(count * bits / 8)


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integers ``0 <= v < 2**bits`` into a little-endian bit stream.

    Value ``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, least significant bit first;
    the result is a flat uint8 tensor of :func:`packed_nbytes` bytes (the last byte zero-padded).
    """
    _check_width(bits)
    flat = values.detach().reshape(-1).to(torch.int64).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise NxmiError(
            f"values to pack must lie in [0, {2**bits - 1}] for {bits} bits, "
            f"got range [{int(flat.min())}, {int(flat.max())}]"
        )
    return _pack(flat.to(torch.uint8), bits)


def _pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`pack_bits` of a uint8 tensor already known to be in range."""
    arr = values.reshape(-1).cpu().numpy()
    if bits == 8:
        return torch.from_numpy(arr.copy())
    bit_matrix = np.unpackbits(arr[:, None], axis=1, count=bits, bitorder="little")  # [count, bits]
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1), bitorder="little"))


def unpack_bits(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values as a flat uint8 tensor."""
    _check_width(bits)
    expected = packed_nbytes(count, bits)
    if data.dtype != torch.uint8 or data.numel() != expected:
        raise NxmiError(
            f"packed data holds {data.numel()} {str(data.dtype).removeprefix('torch.')} values; "
            f"{count} values of {bits} bits need {expected} uint8 bytes"
        )
    arr = data.detach().reshape(-1).cpu().numpy()
    if bits == 8:
        return torch.from_numpy(arr.copy())
    bit_matrix = np.zeros((count, 8), dtype=np.uint8)
    bit_matrix[:, :bits] = np.unpackbits(arr, count=count * bits, bitorder="little").reshape(count, bits)
    return torch.from_numpy(np.packbits(bit_matrix, axis=1, bitorder="little").reshape(-1))


# ----------------------------------------------------------------------------- one weight


def _kept_positions(groups: torch.Tensor, spec: LayerSpec, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """``[out, in/m, n]`` increasing kept positions of every group of ``m`` inputs."""
    if mask is not None:
        keep = mask.detach().to(torch.bool).cpu().reshape(groups.shape)
        counts = keep.sum(-1)
        if not torch.all(counts == spec.n):
            raise NxmiError(
                f"module {name}: its frozen mask is not {spec.n}:{spec.m} (a group keeps {int(counts.max())})"
            )
        if groups.masked_fill(keep, 0.0).any():
            raise NxmiError(f"module {name}: nonzero weights outside its frozen mask; harden the model with its plan")
    else:
        keep = groups != 0
        counts = keep.sum(-1, dtype=torch.int32)
        if int(counts.max()) > spec.n:
            row, group = divmod(int(counts.reshape(-1).argmax()), groups.shape[1])
            first = group * spec.m
            raise NxmiError(
                f"module {name} is not {spec.n}:{spec.m} sparse: row {row}, inputs {first}..{first + spec.m - 1} "
                f"hold {int(counts.max())} nonzero weights (at most {spec.n} allowed); pack a model hardened with "
                f"this plan (nxmi compress --out, nxmi train)"
            )
        # groups with fewer than n nonzeros (kept values that quantized to zero) also keep their
        # first zero slots, so that every group names exactly n positions
        zero_rank = (~keep).to(torch.int32).cumsum(-1)
        keep = keep | (~keep & (zero_rank <= (spec.n - counts)[..., None]))
    # nonzero() lists positions in row-major order: grouped by (row, group), increasing inside
    return keep.nonzero()[:, -1].reshape(groups.shape[0], groups.shape[1], spec.n)


def encode_weight(
    weight: torch.Tensor, spec: "str | LayerSpec", mask: torch.Tensor | None = None, name: str = "weight"
) -> tuple[dict[str, torch.Tensor], float]:
    """Packed tensors (``values``, ``indices``, ``scales``) of one hardened ``[out, in]`` weight.

    Args:
        weight: the effective weight: exactly N:M and on ``spec``'s grid.
        spec: its spec (not dense fp32, which is stored as is).
        mask: the frozen N:M mask, if known: its positions are stored (they differ from the
            nonzero positions where a kept value quantized to zero). Otherwise kept positions are
            the nonzeros, filled up to ``n`` per group with the first zero slots.
        name: module name for error messages.

    Returns:
        The tensors and the largest ``|decoded - weight|``.

    Raises:
        NxmiError: the weight is not N:M, not on the grid of ``spec`` (it was not hardened with
            this spec), or not representable in float16 for fp16 specs.
    """
    spec = LayerSpec.parse(spec)
    if spec.is_identity:
        raise NxmiError(f"module {name}: spec {spec} is dense fp32; it is stored unpacked")
    w = weight.detach().float().cpu()
    if w.dim() != 2 or w.shape[1] % spec.m:
        raise NxmiError(f"module {name}: spec {spec} needs a 2-D weight whose input width is a multiple of {spec.m}, "
                        f"got shape {tuple(w.shape)}")
    out_features, in_features = w.shape
    tensors: dict[str, torch.Tensor] = {}
    if spec.is_sparse:
        groups = w.reshape(out_features, in_features // spec.m, spec.m)
        positions = _kept_positions(groups, spec, mask, name)
        kept = groups.gather(-1, positions).reshape(out_features, -1)
        tensors["indices"] = _pack(positions.to(torch.uint8), index_bits(spec.m))
    else:
        kept = w
    if spec.is_integer:
        scale = weight_scales(w, spec.bits, spec.group_size)  # [out], max-abs: the hardened scale
        if not torch.isfinite(scale).all():
            raise NxmiError(f"module {name}: weight holds NaN or inf values")
        # the reciprocal multiply of fake_quantize, so q is exactly the integer it rounded to
        q = torch.round(kept * (1.0 / scale[:, None]))
        decoded = q * scale[:, None]
        miss = (decoded - kept).abs_()
        off_grid = (miss / scale[:, None]).amax(dim=1)
        if int(q.abs().max()) > qmax(spec.bits) or float(off_grid.max()) > GRID_TOLERANCE:
            row = int(off_grid.argmax())
            raise NxmiError(
                f"module {name}: weights are not on the int{spec.bits} grid of spec {spec} (row {row} is off by "
                f"{float(off_grid.max()):.3g} of a grid step); pack a model hardened with this plan"
            )
        tensors["values"] = _pack((q + 2 ** (spec.bits - 1)).to(torch.uint8), spec.bits)
        tensors["scales"] = scale[group_first_rows(out_features, spec.group_size)].contiguous()
        error = float(miss.max()) if miss.numel() else 0.0
    else:
        dtype = torch.float16 if spec.bits == 16 else torch.float32
        values = kept.to(dtype)
        if not torch.equal(values.float(), kept):
            raise NxmiError(f"module {name}: weights are not float16 values as spec {spec} needs; "
                            f"pack a model hardened with this plan")
        tensors["values"] = values.reshape(-1).contiguous()
        error = 0.0
    return tensors, error


def decode_weight(
    tensors: Mapping[str, torch.Tensor], spec: "str | LayerSpec", out_features: int, in_features: int,
    name: str = "weight",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of :func:`encode_weight`: the float32 ``[out, in]`` weight and the boolean N:M mask
    (``None`` for dense specs)."""
    spec = LayerSpec.parse(spec)
    kept_per_row = in_features * spec.n // spec.m
    count = out_features * kept_per_row
    try:
        if spec.is_integer:
            q = unpack_bits(tensors["values"], spec.bits, count).to(torch.int16) - 2 ** (spec.bits - 1)
            scales = tensors["scales"].float()
            expected = num_scales(out_features, spec.group_size)
            if scales.numel() != expected:
                raise NxmiError(f"{scales.numel()} scales stored, spec {spec} needs {expected}")
            scale = expand_scales(scales, out_features, spec.group_size)
            kept = q.float().reshape(out_features, kept_per_row) * scale[:, None]
        else:
            values = tensors["values"]
            if values.numel() != count:
                raise NxmiError(f"{values.numel()} values stored, spec {spec} needs {count}")
            kept = values.float().reshape(out_features, kept_per_row)
        if not spec.is_sparse:
            return kept, None
        groups = in_features // spec.m
        positions = unpack_bits(tensors["indices"], index_bits(spec.m), count).to(torch.int64)
        positions = positions.reshape(out_features, groups, spec.n)
        if int(positions.max()) >= spec.m or (spec.n > 1 and not torch.all(positions.diff(dim=-1) > 0)):
            raise NxmiError(f"N:M positions are not increasing within 0..{spec.m - 1}")
    except KeyError as exc:
        raise NxmiError(f"corrupt packed module {name}: tensor {exc.args[0]!r} is missing") from None
    except NxmiError as exc:
        raise NxmiError(f"corrupt packed module {name}: {exc}") from None
    weight = torch.zeros(out_features, groups, spec.m)
    weight.scatter_(-1, positions, kept.reshape(out_features, groups, spec.n))
    mask = torch.zeros(out_features, groups, spec.m, dtype=torch.bool)
    mask.scatter_(-1, positions, True)
    return weight.reshape(out_features, in_features), mask.reshape(out_features, in_features)


# ----------------------------------------------------------------------------- report


@dataclass(frozen=True)
class PackedModuleInfo:
    """Sizes of one packed module: bytes on disk next to the ``storage`` accounting."""

    module: str
    spec: str
    out_features: int
    in_features: int
    value_bytes: int
    index_bytes: int
    scale_bytes: int
    storage_bytes: float
    max_abs_error: float = 0.0

    @property
    def tensor_bytes(self) -> int:
        """Bytes of the module's packed tensors."""
        return self.value_bytes + self.index_bytes + self.scale_bytes

    @property
    def dense_bytes(self) -> int:
        """Bytes of the same weight as dense float32."""
        return self.out_features * self.in_features * DENSE_BITS // 8

    @property
    def scale_overhead_bytes(self) -> float:
        """Bytes the float32 scales hold beyond the 16 bits per scale that ``storage`` counts."""
        spec = LayerSpec.parse(self.spec)
        if not spec.is_integer:
            return 0.0
        return self.scale_bytes - num_scales(self.out_features, spec.group_size) * SCALE_BITS / 8


@dataclass(frozen=True)
class PackReport:
    """What :func:`pack_model` wrote: one row per compressed module and the file sizes.

    ``file_bytes`` is the size of ``compressed.safetensors``; ``header_bytes`` the part of it that
    is not tensor data (the safetensors JSON header: names, dtypes, shapes, offsets).
    """

    path: Path
    modules: tuple[PackedModuleInfo, ...]
    file_bytes: int
    rest_bytes: int = 0

    @property
    def tensor_bytes(self) -> int:
        return sum(m.tensor_bytes for m in self.modules)

    @property
    def storage_bytes(self) -> float:
        """The ``storage`` accounting of the compressed modules, in bytes."""
        return sum(m.storage_bytes for m in self.modules)

    @property
    def dense_bytes(self) -> int:
        return sum(m.dense_bytes for m in self.modules)

    @property
    def header_bytes(self) -> int:
        return self.file_bytes - self.tensor_bytes

    @property
    def scale_overhead_bytes(self) -> float:
        return sum(m.scale_overhead_bytes for m in self.modules)

    @property
    def ratio(self) -> float:
        """Tensor bytes / accounted ``storage`` bytes (1.0 = exactly the accounting)."""
        return self.tensor_bytes / self.storage_bytes if self.storage_bytes else 1.0

    @property
    def file_ratio(self) -> float:
        """``compressed.safetensors`` size / accounted ``storage`` bytes."""
        return self.file_bytes / self.storage_bytes if self.storage_bytes else 1.0

    def table(self):
        """One row per module as a pandas DataFrame (sizes in bytes)."""
        import pandas as pd

        rows = [
            {**asdict(m), "tensor_bytes": m.tensor_bytes, "dense_bytes": m.dense_bytes,
             "ratio": m.tensor_bytes / m.storage_bytes}
            for m in self.modules
        ]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """A few lines for people: actual vs accounted sizes of the compressed modules."""
        return "\n".join([
            f"packed {len(self.modules)} compressed modules into {self.path}",
            f"compressed modules: {self.tensor_bytes:,} tensor bytes + {self.header_bytes:,} header bytes "
            f"= {self.file_bytes:,} bytes; storage accounting {self.storage_bytes:,.0f} bytes "
            f"(actual/accounted {self.ratio:.4f}, with header {self.file_ratio:.4f}; float32 scales add "
            f"{self.scale_overhead_bytes:,.0f}); dense fp32 {self.dense_bytes:,} bytes",
            f"other tensors (embeddings, biases, norms, classifier, dense modules): {self.rest_bytes:,} bytes",
        ])

    @classmethod
    def load(cls, packed_dir: str | Path) -> "PackReport":
        """The report of an existing packed directory, from its manifest and file sizes."""
        packed_dir = Path(packed_dir)
        manifest = read_manifest(packed_dir)
        modules = tuple(_info_from_entry(name, entry) for name, entry in manifest["modules"].items())
        return cls(packed_dir, modules, (packed_dir / COMPRESSED_FILE).stat().st_size,
                   (packed_dir / REST_FILE).stat().st_size)


def _info_from_entry(name: str, entry: Mapping[str, Any]) -> PackedModuleInfo:
    sizes = entry["bytes"]
    out_features, in_features = entry["shape"]
    return PackedModuleInfo(name, entry["spec"], out_features, in_features, sizes.get("values", 0),
                            sizes.get("indices", 0), sizes.get("scales", 0), entry["storage_bits"] / 8,
                            entry.get("max_abs_error", 0.0))


# ----------------------------------------------------------------------------- directories


def _copy_extra_files(src: Path, dst: Path, skip: set[str]) -> None:
    """Copy the top-level files of ``src`` that are not weights or files we write ourselves
    (tokenizer files, metrics.json, README...)."""
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name not in skip and not path.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(path, dst / path.name)


def _packable_weights(
    model: nn.Module, plan: CompressionPlan
) -> list[tuple[str, LayerSpec, torch.Tensor, torch.Tensor | None]]:
    """(name, spec, effective weight, frozen mask or None) of every module the plan compresses."""
    plan.validate(model)
    found = []
    for cm in compressible_modules(model):
        spec = plan.spec_for(cm.name)
        module = cm.module
        if isinstance(module, CompressedLinear):
            if module.spec != spec:
                raise NxmiError(f"module {cm.name} is wrapped with spec {module.spec} but the plan says {spec}")
            if not module.hardened:
                raise NxmiError(f"module {cm.name} is not hardened; call harden_(model) before packing")
            with torch.no_grad():
                weight, mask = module.effective_weight().detach(), module.mask
        else:
            weight, mask = module.weight.detach(), None
        if not spec.is_identity:
            found.append((cm.name, spec, weight, mask))
    return found


def pack_model(model: nn.Module, plan: CompressionPlan, out_dir: str | Path, tokenizer=None) -> PackReport:
    """Write ``model`` as a packed directory (see the module docstring) and report its sizes.

    Args:
        model: a hardened model: either wrapped by :func:`compress_` and :func:`harden_` with
            ``plan``, or plain ``nn.Linear`` layers whose weights are already exactly N:M and on
            ``plan``'s grids (a directory saved by ``nxmi compress --out`` / ``nxmi train``).
        plan: the plan it was hardened with.
        out_dir: a new or empty directory; written atomically (nothing is left on failure).
        tokenizer: saved beside the model when given.

    Raises:
        NxmiError: ``out_dir`` is not empty, or a module is not hardened with its spec.
    """
    return _write_packed(model, plan, out_dir, tokenizer=tokenizer)


def _write_packed(model: nn.Module, plan: CompressionPlan, out_dir: str | Path, tokenizer=None,
                  copy_from: Path | None = None) -> PackReport:
    from safetensors.torch import save_file

    require_free_output(out_dir)
    if getattr(model, "config", None) is None:
        raise NxmiError(f"cannot pack a {type(model).__name__}: expected a Hugging Face model with a .config")
    packed: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    infos = []
    for name, spec, weight, mask in _packable_weights(model, plan):
        tensors, error = encode_weight(weight, spec, mask, name)
        out_features, in_features = weight.shape
        sizes = {kind: t.numel() * t.element_size() for kind, t in tensors.items()}
        storage_bits = module_bits(spec, out_features, in_features, "storage")
        for kind, tensor in tensors.items():
            packed[f"{name}.{kind}"] = tensor
        entries[name] = {"spec": str(spec), "shape": [out_features, in_features],
                         "dtype": str(weight.dtype).removeprefix("torch."), "bytes": sizes,
                         "storage_bits": storage_bits, "max_abs_error": error}
        infos.append(_info_from_entry(name, entries[name]))
    # trained (lsq) scales live in the packed scales: the largest kept value of a group is on +-qmax
    skip = {f"{name}.{kind}" for name in entries for kind in ("weight", "scale")}
    # clones: safetensors refuses tensors that share storage (tied weights); load_state_dict later
    # writes both copies into the one tied parameter
    rest = {key: value.detach().cpu().clone().contiguous()
            for key, value in model.state_dict().items() if key not in skip}
    manifest = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "encoding": "little-endian bit stream; values offset binary q + 2^(bits-1); N:M positions per group sorted; "
                    "scales float32 per scale group",
        "files": {"compressed": COMPRESSED_FILE, "rest": REST_FILE},
        "modules": entries,
    }
    with atomic_output_dir(out_dir) as tmp:
        if copy_from is not None:
            _copy_extra_files(copy_from, tmp, skip={*_OWN_FILES, COMPRESSED_FILE, REST_FILE})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(packed, tmp / COMPRESSED_FILE, metadata={"format": PACK_FORMAT, "version": str(PACK_VERSION)})
        save_file(rest, tmp / REST_FILE, metadata={"format": "pt"})
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]  # as save_pretrained records it; load_packed rebuilds it
        config.save_pretrained(tmp)
        plan.save(tmp / PLAN_FILE)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        file_bytes = (tmp / COMPRESSED_FILE).stat().st_size
        rest_bytes = (tmp / REST_FILE).stat().st_size
    return PackReport(Path(out_dir), tuple(infos), file_bytes, rest_bytes)


def pack_dir(model_dir: str | Path, out_dir: str | Path) -> PackReport:
    """Pack a hardened model directory (``save_pretrained`` + ``plan.json``, as saved by
    ``nxmi compress --out`` or ``nxmi train``) into ``out_dir``; tokenizer and other files are
    copied.

    Raises:
        NxmiError: ``model_dir`` has no ``plan.json`` or its weights do not fit the plan, or
            ``out_dir`` is not empty.
    """
    from ..models import load_model

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise NxmiError(f"model directory not found: {model_dir}")
    if not (model_dir / PLAN_FILE).is_file():
        raise NxmiError(f"{model_dir} has no {PLAN_FILE}; pack needs a hardened model directory "
                        f"(nxmi compress --out or nxmi train)")
    require_free_output(out_dir)
    plan = CompressionPlan.load(model_dir / PLAN_FILE)
    model = load_model(str(model_dir))
    return _write_packed(model, plan, out_dir, copy_from=model_dir)


def read_manifest(packed_dir: str | Path) -> dict[str, Any]:
    """The checked ``pack.json`` of a packed directory."""
    packed_dir = Path(packed_dir)
    path = packed_dir / MANIFEST_FILE
    manifest = read_json(path, f"{packed_dir} is not a packed model directory: no {MANIFEST_FILE} (make one with nxmi pack)")
    if manifest.get("format") != PACK_FORMAT:
        raise NxmiError(f"{path} is not a packed model manifest: format is {manifest.get('format')!r}, "
                        f"expected {PACK_FORMAT!r}")
    if manifest.get("version") != PACK_VERSION:
        raise NxmiError(f"unsupported packed format version {manifest.get('version')!r}; "
                        f"this nxmiformer reads version {PACK_VERSION}")
    for name in (COMPRESSED_FILE, REST_FILE, CONFIG_FILE, PLAN_FILE):
        if not (packed_dir / name).is_file():
            raise NxmiError(f"packed model directory {packed_dir} is missing {name}")
    return manifest


@torch.no_grad()
def load_packed(packed_dir: str | Path, wrap: bool = True) -> nn.Module:
    """Rebuild the model of a packed directory (in eval mode).

    With ``wrap=True`` the compressed modules are :class:`CompressedLinear` wrappers hardened with
    the stored masks, so ``current_plan(model)`` is the plan (less its dense fp32 entries) and the
    forward is the hardened model's (activation fake-quantization included). With ``wrap=False``
    they are plain ``nn.Linear`` layers holding the decoded weights, like a hardened directory
    saved by ``nxmi compress --out``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..models import skeleton

    packed_dir = Path(packed_dir)
    manifest = read_manifest(packed_dir)
    plan = CompressionPlan.load(packed_dir / PLAN_FILE)
    try:
        packed = load_file(packed_dir / COMPRESSED_FILE)
        state = load_file(packed_dir / REST_FILE)
    except (SafetensorError, OSError) as exc:
        raise NxmiError(f"cannot read packed tensors in {packed_dir}: {exc}") from None
    masks = {}
    for name, entry in manifest["modules"].items():
        spec = LayerSpec.parse(entry["spec"])
        if plan.spec_for(name) != spec:
            raise NxmiError(f"{MANIFEST_FILE} packs {name} as {spec} but {PLAN_FILE} says {plan.spec_for(name)}")
        tensors = {kind: packed[key] for kind in ("values", "indices", "scales") if (key := f"{name}.{kind}") in packed}
        weight, mask = decode_weight(tensors, spec, *entry["shape"], name=name)
        state[f"{name}.weight"] = weight.to(getattr(torch, entry.get("dtype", "float32")))
        if mask is not None:
            masks[name] = mask
    model = skeleton(packed_dir, device=None, saved_class=True)  # the class that was packed (config.json records it)
    missing, unexpected = (sorted(set(model.state_dict()) - set(state)), sorted(set(state) - set(model.state_dict())))
    if missing or unexpected:
        raise NxmiError(f"packed tensors do not fit the {type(model).__name__} of config.json: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(state)
    if wrap:
        compress_(model, plan)
        harden_(model, masks, project_weights=False)
    return model.eval()


def unpack_dir(packed_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a packed directory back as an ordinary hardened model directory
    (``save_pretrained`` + ``plan.json`` + tokenizer and other files); returns ``out_dir``."""
    packed_dir = Path(packed_dir)
    require_free_output(out_dir)
    model = load_packed(packed_dir, wrap=False)
    plan = CompressionPlan.load(packed_dir / PLAN_FILE)
    with atomic_output_dir(out_dir) as tmp:
        _copy_extra_files(packed_dir, tmp, skip={*_OWN_FILES, COMPRESSED_FILE, REST_FILE})
        model.save_pretrained(tmp)
        plan.save(tmp / PLAN_FILE)
    return Path(out_dir)

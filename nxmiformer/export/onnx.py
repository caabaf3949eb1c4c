"""ONNX export of a hardened model, with its integer weights carried over exactly and stored at
their width.

:func:`export_onnx` writes a graph that ONNX Runtime (or any ONNX runtime: only standard operators
are used) runs without nxmiformer:

* every hardened module with integer weights of at most 8 bits becomes the dynamic-quantization
  pattern ``DynamicQuantizeLinear`` (the input, per tensor, uint8) -> ``MatMulInteger`` with the
  module's own integer codes (``int8``) -> ``Cast`` -> ``Mul`` by the input scale times the
  module's own per-row scales. The codes and scales are the hardened ones (checked to lie on the
  grid), not re-quantized: only the activations are rounded. ONNX Runtime fuses the pattern into
  its int8 kernel (``DynamicQuantizeMatMul``), the kernel of its own ``quantize_dynamic``;
* the codes are stored as the packed format (:mod:`.pack`) stores them: kept values at their bit
  width and N:M positions (``2:4:int4``: 3 bits a weight), decoded by standard operators (bit
  shifts, a scatter into zeros) whose inputs are all constants, so ONNX Runtime folds them into
  int8 matrices when the session loads (its default graph optimizations; with optimizations off
  the decoding runs at every call);
* the embedding tables are stored as ``embeddings`` asks (int8 or int4 with float16 scales, fp16,
  fp32) and decoded to fp32 the same way; everything else (dense fp32 and float16 modules,
  LayerNorm, pooler, classifier) stays fp32, as the hardened model computes it.

ONNX Runtime's uint8 x int8 kernel adds pairs of products in int16 on CPUs with AVX2 but without
AVX512-VNNI / AVX-VNNI, where codes beyond 63 can saturate (its own documentation says the same of
``quantize_dynamic``'s files). ``u8_weights=True`` stores such codes as uint8 (code + 128, zero
point 128), the same integers on its exact uint8 x uint8 kernel, about 1.5x slower
(``bench/cpu_serving.py``).

With ``fuse=True`` ONNX Runtime's BERT fusions run first and a fused ``Attention`` whose Q, K and V
are all integer becomes ``QAttention`` with the same codes and scales (ONNX Runtime only).

``int8=False`` exports the hardened model in fp32 only (the same logits as PyTorch up to float
rounding), the reference the int8 graph is measured against.

ONNX Runtime has no sparse CPU kernel: N:M zeros cost nothing on disk but are multiplied at run time.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import NxmiError, first_line
from ..compression.layer import CompressedLinear, compressed_modules, to_dense_
from ..compression.quant import expand_scales, quantize_to_int
from ..compression.spec import LayerSpec
from .pack import GRID_TOLERANCE, encode_weight, pack_bits

ONNX_FILE = "model.onnx"
REPORT_FILE = "onnx.json"
OPSET = 18
# names of the graph's inputs, in the order BERT-like models' forward takes them
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def int8_servable(module: CompressedLinear) -> str | None:
    """Why ``module`` cannot run on the int8 pattern, or ``None`` if it can."""
    spec = module.spec
    if not module.hardened:
        return "not hardened"
    if not spec.is_integer:
        return f"{spec.bits}-bit float weights"
    if spec.bits > 8:
        return f"{spec.bits}-bit integers do not fit int8"
    return None


def integer_codes(module: CompressedLinear, name: str = "module") -> tuple[torch.Tensor, torch.Tensor]:
    """The hardened module's ``int8`` codes ``[out, in]`` and float32 per-row scales ``[out]``,
    such that ``codes * scales[:, None]`` is its effective weight.

    Raises:
        NxmiError: the effective weight is not on the integer grid of the module's spec.
    """
    weight = module.effective_weight().detach().float().cpu()
    codes, scales = quantize_to_int(weight, module.spec.bits, module.spec.group_size)
    miss = (codes.float() * scales[:, None] - weight).abs() / scales[:, None]
    if miss.numel() and float(miss.max()) > GRID_TOLERANCE:
        raise NxmiError(f"module {name}: weights are not on the int{module.spec.bits} grid of spec {module.spec} "
                        f"(off by {float(miss.max()):.3g} of a grid step); export a model hardened with its plan")
    return codes, scales


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, the modules on int8 kernels and those left fp32
    (with the reason), how the embedding tables are stored, the largest logit difference from the
    PyTorch model on a check batch, and the file's size against the fp32 model's and against what
    the plan's ``storage`` accounting predicts."""

    path: Path
    int8_modules: list[str] = field(default_factory=list)
    fp32_modules: dict[str, str] = field(default_factory=dict)
    embeddings: str = "fp32"
    max_logit_diff: float = float("nan")
    agreement: float = float("nan")
    file_bytes: int = 0
    predicted_bytes: int = 0
    dense_bytes: int = 0

    def summary(self) -> str:
        kept = f", {len(self.fp32_modules)} compressed modules kept fp32" if self.fp32_modules else ""
        size = ""
        if self.file_bytes:
            size = (f"; {self.file_bytes / 1e6:.2f} MB ({self.file_bytes / self.dense_bytes:.1%} of the fp32 model's "
                    f"{self.dense_bytes / 1e6:.2f} MB; accounting predicts {self.predicted_bytes / 1e6:.2f} MB)")
        return (f"{self.path}: {len(self.int8_modules)} modules on int8 kernels{kept}, {self.embeddings} embeddings"
                f"{size}; check batch: max |logit difference| {self.max_logit_diff:.3g} vs the PyTorch model, "
                f"argmax agreement {self.agreement:.2%}")

    def to_json(self) -> dict:
        return {"file": self.path.name, "int8_modules": self.int8_modules, "fp32_modules": self.fp32_modules,
                "embeddings": self.embeddings,
                "size": {"file_bytes": self.file_bytes, "predicted_bytes": self.predicted_bytes,
                         "dense_bytes": self.dense_bytes},
                "check": {"max_logit_diff": self.max_logit_diff, "argmax_agreement": self.agreement}}


def _example_inputs(model: nn.Module, names: tuple[str, ...], batch: int, length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model.config, "vocab_size", 100))
    ids = torch.randint(1, vocab, (batch, length), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    if batch > 1:  # padding in the check batch, so the mask path is exercised
        inputs["attention_mask"][1, length // 2:] = 0
    return {name: inputs[name] for name in names}


def _export_fp32(model: nn.Module, names: tuple[str, ...], path: Path, fuse: bool) -> None:
    """The fp32 graph of a plain (unwrapped) model: PyTorch's TorchScript-based exporter over the
    eager attention (the graph ONNX Runtime's BERT fusions recognise), then, with ``fuse``,
    those fusions (``Attention``, ``EmbedLayerNormalization``, ``SkipLayerNormalization``,
    ``BiasGelu``: ONNX Runtime contrib operators).

    The TorchScript-based exporter is the one whose BERT graph those fusions and the int8 rewrite
    are tested on; PyTorch has deprecated it in favour of the ``torch.export`` one (whose graph of
    the same model ONNX Runtime 1.32 does not fuse)."""
    model = copy.deepcopy(model)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    example = _example_inputs(model, names, 2, 8)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(model, tuple(example[name] for name in names), str(path), input_names=list(names),
                              output_names=["logits"], dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names},
                              opset_version=OPSET, dynamo=False)
    except Exception as exc:  # the exporter raises many types for a model it cannot trace
        raise NxmiError(f"torch.onnx.export cannot export {type(model).__name__}: {first_line(exc)}; the hardened "
                        f"or packed model directory still runs in PyTorch (nxmi evaluate --model DIR)") from exc
    finally:
        exporter_log.setLevel(level)
    if fuse:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

        config = model.config
        model_type = config.model_type if config.model_type in MODEL_TYPES else "bert"
        options = FusionOptions(model_type)
        ort_log = logging.getLogger("onnxruntime.transformers")
        level = ort_log.level
        ort_log.setLevel(logging.ERROR)
        try:
            fused = optimize_model(str(path), model_type=model_type, num_heads=config.num_attention_heads,
                                   hidden_size=config.hidden_size, opt_level=0,
                                   optimization_options=options)
        finally:
            ort_log.setLevel(level)
        fused.save_model_to_file(str(path))


# the largest |code| whose products with uint8 inputs, summed in pairs, fit int16: 255 * 63 * 2 = 32130
SATURATION_FREE_CODE = 63
# how ``export_onnx`` may store the embedding tables; the default keeps SST-2 and TweetEval accuracy within
# 0.3 points of fp32 tables (docs/measurements.md, "Serving files")
EMBEDDINGS = ("int8", "int4", "fp16", "fp32")
DEFAULT_EMBEDDINGS = "int4"
# columns of a table row that share one float16 scale, per integer storage (None, or a block that does not divide
# the row: the whole row)
EMBEDDING_BLOCKS = {"int8": None, "int4": 64}
# ops that only decode stored weights; ONNX Runtime folds them into constants when the session loads
DECODE_OPS = frozenset({"BitShift", "BitwiseAnd", "ScatterElements", "ConstantOfShape"})


def _weight_key(weight_t) -> bytes:
    import numpy as np

    return np.ascontiguousarray(weight_t, dtype=np.float32).tobytes()


class _Builder:
    """Nodes and initializers added to a graph, with names under one stem each."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list = []
        self.initializers: list = []
        self.shared: set[str] = set()

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def common(self, name: str, value) -> str:
        """A constant that every decoder shares (added once to the graph)."""
        name = f"{self.prefix}.{name}"
        if name not in self.shared:
            self.shared.add(name)
            self.const(name, value)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        """Add one node; returns its output's name. Nodes are unnamed and intermediate outputs get
        short numbered names (the file stays small: MiniLM has about 1,600 decoding nodes); the
        decoded codes (``.weight_q``) and tables (``/table``) keep their module's name."""
        from onnx import helper

        if not output.endswith((".weight_q", "/table")):
            output = f"{self.prefix}.{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def unpack(self, stem: str, data, bits: int, count: int) -> str:
        """int32 ``[count]`` unsigned values read from ``data``, the bytes of :func:`.pack.pack_bits`
        (value ``i`` in stream bits ``[i * bits, (i + 1) * bits)``, least significant first)."""
        import numpy as np
        from onnx import TensorProto

        data = self.const(f"{stem}.packed", np.ascontiguousarray(data, dtype=np.uint8))
        if bits == 8:
            return self.node("Cast", [data], f"{stem}/values", to=TensorProto.INT32)
        one_axis = self.common("axis1", np.array([1], np.int64))
        byte_bits = self.node("Unsqueeze", [data, one_axis], f"{stem}/bytes")
        shifted = self.node("BitShift", [byte_bits, self.common("shifts", np.arange(8, dtype=np.uint8))],
                            f"{stem}/shifted", direction="RIGHT")
        stream = self.node("BitwiseAnd", [shifted, self.common("one", np.array(1, np.uint8))], f"{stem}/bits")
        stream = self.node("Reshape", [stream, self.common("flat", np.array([-1], np.int64))], f"{stem}/stream")
        stream = self.node("Slice", [stream, self.common("start", np.array([0], np.int64)),
                                     self.const(f"{stem}.end", np.array([count * bits], np.int64))], f"{stem}/used")
        stream = self.node("Cast", [stream], f"{stem}/used_int", to=TensorProto.INT32)
        stream = self.node("Reshape", [stream, self.const(f"{stem}.shape", np.array([count, bits], np.int64))],
                           f"{stem}/digits")
        weighted = self.node("Mul", [stream, self.common(f"powers{bits}", (2 ** np.arange(bits)).astype(np.int32))],
                             f"{stem}/weighted")
        return self.node("ReduceSum", [weighted, one_axis], f"{stem}/values", keepdims=0)

    def signed(self, stem: str, data, bits: int, count: int) -> str:
        """int32 ``[count]`` symmetric integers stored as offset binary (``q + 2^(bits-1)``)."""
        import numpy as np

        values = self.unpack(stem, data, bits, count)
        return self.node("Sub", [values, self.common(f"offset{bits}", np.array(2 ** (bits - 1), np.int32))],
                         f"{stem}/q")

    def weight_codes(self, stem: str, tensors: dict, spec, out_features: int, in_features: int, zero: int) -> str:
        """``[in, out]`` codes ``W^T`` (int8, or uint8 when ``zero`` is 128) of one packed weight
        (:func:`.pack.encode_weight`'s ``values`` and ``indices``): unpacked, N:M positions
        scattered into zeros, transposed."""
        import numpy as np
        from onnx import TensorProto, numpy_helper

        from ..compression.accounting import index_bits

        count = out_features * in_features * spec.n // spec.m
        q = self.signed(f"{stem}.values", tensors["values"].numpy(), spec.bits, count)
        if spec.is_sparse:
            groups = in_features // spec.m
            kept_shape = self.const(f"{stem}.kept_shape", np.array([out_features, groups, spec.n], np.int64))
            positions = self.unpack(f"{stem}.indices", tensors["indices"].numpy(), index_bits(spec.m), count)
            positions = self.node("Reshape", [positions, kept_shape], f"{stem}/positions")
            q = self.node("Reshape", [q, kept_shape], f"{stem}/kept")
            zeros = self.node("ConstantOfShape", [self.const(f"{stem}.group_shape", np.array(
                [out_features, groups, spec.m], np.int64))], f"{stem}/zeros",
                value=numpy_helper.from_array(np.zeros(1, np.int32)))
            q = self.node("ScatterElements", [zeros, positions, q], f"{stem}/scattered", axis=2)
        q = self.node("Reshape", [q, self.const(f"{stem}.weight_shape", np.array([out_features, in_features],
                                                                                 np.int64))], f"{stem}/codes")
        q = self.node("Transpose", [q], f"{stem}/codes_t", perm=[1, 0])
        if zero:
            q = self.node("Add", [q, self.common(f"zero{zero}", np.array(zero, np.int32))], f"{stem}/codes_u")
        return self.node("Cast", [q], f"{stem}.weight_q", to=TensorProto.UINT8 if zero else TensorProto.INT8)

    def table(self, stem: str, table, mode: str) -> str:
        """An fp32 embedding table stored as ``mode``: symmetric integers with one float16 scale per
        block of :data:`EMBEDDING_BLOCKS` columns of a row (int8; int4 packed two to a byte),
        float16, or as it is."""
        import numpy as np
        from onnx import TensorProto

        if mode == "fp16":
            return self.node("Cast", [self.const(f"{stem}.fp16", table.astype(np.float16))], f"{stem}/table",
                             to=TensorProto.FLOAT)
        bits = int(mode.removeprefix("int"))
        limit = 2 ** (bits - 1) - 1
        rows, width = table.shape
        block = EMBEDDING_BLOCKS[mode] or width
        block = block if width % block == 0 else width
        blocks = table.reshape(rows, width // block, block)
        scales = (np.abs(blocks).max(axis=2) / limit).astype(np.float16)
        scales[scales == 0] = 1.0
        codes = np.clip(np.round(blocks / scales.astype(np.float32)[..., None]), -limit, limit).astype(np.int32)
        shape = self.const(f"{stem}.blocks", np.array(blocks.shape, np.int64))
        if bits == 8:
            values = self.node("Reshape", [self.const(f"{stem}.int8", codes.astype(np.int8).reshape(rows, width)),
                                           shape], f"{stem}/codes_int")
        else:
            packed = pack_bits(torch.from_numpy(codes + 2 ** (bits - 1)).reshape(-1), bits).numpy()
            values = self.signed(f"{stem}.int{bits}", packed, bits, codes.size)
            values = self.node("Reshape", [values, shape], f"{stem}/codes_int")
        values = self.node("Cast", [values], f"{stem}/codes", to=TensorProto.FLOAT)
        scale = self.node("Cast", [self.const(f"{stem}.scales", scales[..., None])], f"{stem}/scales",
                          to=TensorProto.FLOAT)
        scaled = self.node("Mul", [values, scale], f"{stem}/scaled")
        return self.node("Reshape", [scaled, self.const(f"{stem}.shape", np.array(table.shape, np.int64))],
                         f"{stem}/table")


@dataclass
class _Target:
    """A module to put on int8 kernels: its packed tensors (:func:`.pack.encode_weight`) and shape."""

    name: str
    tensors: dict
    spec: LayerSpec
    out_features: int
    in_features: int
    max_code: int


def _quantize_graph(graph, targets: dict[bytes, _Target], u8_weights: bool = False) -> tuple[list[str], dict[str, str]]:
    """Put the target modules' matmuls (matched by the value of ``W^T``) on int8 kernels, in place:
    ``MatMul(x, W^T)`` becomes the standard dynamic-quantization pattern, and a fused ``Attention``
    whose packed ``[W_q^T | W_k^T | W_v^T]`` are all targets becomes ``QAttention``. The codes are
    stored packed (:func:`.pack.encode_weight`) and decoded by nodes that ONNX Runtime folds into
    constants when it loads the file.

    Returns the module names replaced, and the targets left fp32 with the reason."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    quantized: dict[str, str] = {}  # input -> prefix of its DynamicQuantizeLinear outputs (shared by consumers)
    built = _Builder("nxmi.weights")
    added: set[str] = set()
    replaced: list[str] = []
    left: dict[str, str] = {}
    nodes = []

    def weight(name: str):
        init = initializers.get(name)
        return None if init is None or len(init.dims) != 2 else numpy_helper.to_array(init)

    def zero_point(parts: list[_Target]) -> int:
        # with u8_weights, codes beyond 63 go as uint8 (code + 128, zero point 128): see the module docstring
        return 128 if u8_weights and max(part.max_code for part in parts) > SATURATION_FREE_CODE else 0

    def add_weights(stem: str, parts) -> None:
        if stem in added:
            return
        added.add(stem)
        zero = zero_point(parts)
        codes = [built.weight_codes(stem if len(parts) == 1 else f"{stem}.{i}", part.tensors, part.spec,
                                    part.out_features, part.in_features, zero) for i, part in enumerate(parts)]
        if len(codes) > 1:
            built.node("Concat", codes, f"{stem}.weight_q", axis=1)  # Q, K and V of a fused attention
        scales = np.concatenate([expand_scales(part.tensors["scales"], part.out_features, part.spec.group_size).numpy()
                                 for part in parts]).astype(np.float32)
        built.const(f"{stem}.weight_scale", scales)
        built.const(f"{stem}.weight_zero_point", np.full(len(scales), zero, dtype=np.uint8 if zero else np.int8))

    def quantize_input(x: str, prefix: str) -> str:
        if x not in quantized:
            quantized[x] = f"{prefix}/input"
            nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [f"{prefix}/input_q", f"{prefix}/input_scale",
                                                                         f"{prefix}/input_zero_point"],
                                          name=f"{prefix}/DynamicQuantizeLinear"))
        return quantized[x]

    for node in graph.node:
        if node.op_type == "MatMul" and node.domain == "" and (w := weight(node.input[1])) is not None \
                and (target := targets.get(_weight_key(w))) is not None:
            name = target.name
            add_weights(name, [target])
            prefix = f"{name}/{node.name or 'MatMul'}"
            xq = quantize_input(node.input[0], prefix)
            nodes += [
                helper.make_node("MatMulInteger", [f"{xq}_q", f"{name}.weight_q", f"{xq}_zero_point",
                                                   f"{name}.weight_zero_point"], [f"{prefix}/y_int32"],
                                 name=f"{prefix}/MatMulInteger"),
                helper.make_node("Cast", [f"{prefix}/y_int32"], [f"{prefix}/y_float"], to=TensorProto.FLOAT,
                                 name=f"{prefix}/Cast"),
                helper.make_node("Mul", [f"{xq}_scale", f"{name}.weight_scale"], [f"{prefix}/scale"],
                                 name=f"{prefix}/ScaleMul"),
                helper.make_node("Mul", [f"{prefix}/y_float", f"{prefix}/scale"], [node.output[0]],
                                 name=f"{prefix}/OutputMul"),
            ]
            replaced.append(name)
            continue
        if node.op_type == "Attention" and node.domain == "com.microsoft" and (w := weight(node.input[1])) is not None \
                and w.shape[1] % 3 == 0:
            parts = [targets.get(_weight_key(block)) for block in np.split(w, 3, axis=1)]
            names = [part.name for part in parts if part is not None]
            attributes = {a.name for a in node.attribute}
            if len(names) == 3 and attributes <= {"num_heads", "unidirectional"} and len(node.input) <= 4 \
                    and len(node.output) == 1:
                stem = f"{node.name or 'Attention'}.qkv"
                add_weights(stem, parts)
                xq = quantize_input(node.input[0], stem)
                mask = node.input[3] if len(node.input) > 3 else ""
                quantized_attention = helper.make_node(
                    "QAttention", [f"{xq}_q", f"{stem}.weight_q", node.input[2], f"{xq}_scale",
                                   f"{stem}.weight_scale", mask, f"{xq}_zero_point", f"{stem}.weight_zero_point"],
                    list(node.output), name=f"{stem}/QAttention", domain="com.microsoft")
                quantized_attention.attribute.extend(node.attribute)
                nodes.append(quantized_attention)
                replaced += names
                continue
            for name in names:
                left[name] = "its fused attention has Q, K or V on another spec, or an unsupported attribute"
        nodes.append(node)
    _replace_graph(graph, built, nodes)
    return sorted(set(replaced)), left


def _replace_graph(graph, built: _Builder, nodes: list) -> None:
    """Set the graph's nodes to ``built``'s decoding nodes then ``nodes``, add ``built``'s
    initializers, and drop the initializers no node uses any more."""
    graph.initializer.extend(built.initializers)
    nodes = built.nodes + nodes
    used = {i for node in nodes for i in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _compress_embeddings(graph, tables: dict[bytes, str], mode: str) -> None:
    """Store the embedding tables (matched by value) as ``mode``; every node that read a table reads
    its decoded fp32 copy, which ONNX Runtime folds into a constant at load."""
    from onnx import numpy_helper

    built = _Builder("nxmi.embeddings")
    renamed: dict[str, str] = {}
    for init in graph.initializer:
        if len(init.dims) == 2 and init.data_type == 1 and (name := tables.get(
                _weight_key(numpy_helper.to_array(init)))) is not None and init.name not in renamed:
            renamed[init.name] = built.table(name, numpy_helper.to_array(init), mode)
    for node in graph.node:
        for i, value in enumerate(node.input):
            if value in renamed:
                node.input[i] = renamed[value]
    _replace_graph(graph, built, list(graph.node))


def _check(model: nn.Module, path: Path, names: tuple[str, ...]) -> tuple[float, float]:
    import onnxruntime as ort

    example = _example_inputs(model, names, 4, 16, seed=1)
    with torch.inference_mode():
        expected = model(**example).logits.float()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # the exporter drops an input the graph does not use (DeBERTa's token_type_ids without token types)
    taken = {i.name for i in session.get_inputs()}
    got = torch.from_numpy(session.run(["logits"], {k: v.numpy() for k, v in example.items() if k in taken})[0])
    diff = float((got - expected).abs().max())
    agreement = float((got.argmax(-1) == expected.argmax(-1)).float().mean())
    return diff, agreement


def check_embeddings(mode: str) -> str:
    """``mode`` if it is one of :data:`EMBEDDINGS`, else an error naming them."""
    if mode not in EMBEDDINGS:
        raise NxmiError(f"unknown embeddings storage {mode!r}; allowed: {', '.join(EMBEDDINGS)}")
    return mode


def _embedding_tables(model: nn.Module) -> dict[bytes, str]:
    """The model's embedding tables (every ``nn.Embedding``), keyed by value, with their names."""
    return {_weight_key(module.weight.detach().float().cpu().numpy()): name
            for name, module in model.named_modules() if isinstance(module, nn.Embedding)}


def _predicted_bytes(model: nn.Module, targets: dict[bytes, "_Target"], embeddings: str) -> int:
    """The file's size as the accounting sees it: every int8-kernel module at its ``storage``
    bits (kept values, N:M indices, 16-bit scales), the embedding tables at ``embeddings`` (one
    16-bit scale per row for integers), every other parameter fp32."""
    from ..compression.accounting import module_bits

    bits = 0.0
    covered = set()
    for target in targets.values():
        bits += module_bits(target.spec, target.out_features, target.in_features, "storage")
        covered.add(f"{target.name}.weight")
    width = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}[embeddings]
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            rows, dim = module.weight.shape
            bits += rows * dim * width + (rows * 16 if embeddings.startswith("int") else 0)
            covered.add(f"{name}.weight" if name else "weight")
    bits += sum(p.numel() * 32 for name, p in model.named_parameters() if name not in covered)
    return int(bits / 8)


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | Path, int8: bool = True, fuse: bool = False,
                input_names: tuple[str, ...] | None = None, check: bool = True,
                embeddings: str | None = None, u8_weights: bool = False) -> OnnxExport:
    """Write ``model`` (a sequence classifier whose compressed modules are hardened
    :class:`CompressedLinear` wrappers, as :func:`~.harden_` or :func:`~.load_packed` leave them)
    to the ONNX file ``path``.

    Integer modules are stored as the packed format stores them (:mod:`.pack`: kept values at
    their bit width, N:M positions, scales): ``2:4:int4`` costs 3 bits per weight on disk, not 8.
    Standard operators decode them (bit shifts, a scatter into zeros); ONNX Runtime folds those
    nodes into int8 constants when it loads the file (its default graph optimizations), so the
    session runs the same int8 kernels as a file that stored the codes as int8.

    Args:
        int8: put the integer modules (at most 8 bits) on int8 kernels; else export fp32 only.
        fuse: apply ONNX Runtime's transformer fusions (``Attention`` -> ``QAttention``,
            ``SkipLayerNormalization``...: its contrib operators, so the file then needs ONNX
            Runtime). Measured on 2 cores (``bench/cpu_serving.py``): faster at batch 1, slower at
            batch 32 than the default standard-operator graph, which ONNX Runtime fuses itself.
        input_names: the graph's inputs (default: those of ``input_ids``, ``attention_mask``,
            ``token_type_ids`` that the model's forward takes).
        check: run the file with ONNX Runtime on a random batch and report the largest logit
            difference from ``model`` and the argmax agreement.
        embeddings: how the embedding tables are stored (:data:`EMBEDDINGS`): symmetric int8 or
            int4 with one scale per row, float16, or fp32; decoded to fp32 at load. Default
            :data:`DEFAULT_EMBEDDINGS` with ``int8``, fp32 without (the reference export).
        u8_weights: store codes beyond 63 as uint8, exact on CPUs without VNNI, slower (see the
            module docstring).

    Raises:
        NxmiError: a compressed module is not hardened, or not on its spec's grid; a module
            uses activation quantization (``a8``...), which the export does not carry; an
            unknown ``embeddings``.
    """
    import inspect

    import onnx

    embeddings = check_embeddings(embeddings or (DEFAULT_EMBEDDINGS if int8 else "fp32"))
    path = Path(path)
    modules = compressed_modules(model)
    for name, module in modules.items():
        if module.spec.act_bits is not None:
            raise NxmiError(f"module {name}: spec {module.spec} quantizes activations per token, which the ONNX "
                            f"export does not carry; export a plan without a{module.spec.act_bits}")
        if not module.hardened:
            raise NxmiError(f"module {name} is not hardened: call harden_(model) (or train the plan) before exporting")
    if input_names is None:
        accepted = inspect.signature(model.forward).parameters
        input_names = tuple(name for name in INPUT_NAMES if name in accepted)
    report = OnnxExport(path, embeddings=embeddings)
    targets: dict[bytes, _Target] = {}
    for name, module in modules.items():
        reason = int8_servable(module) if int8 else "fp32 export"
        if reason is not None:
            report.fp32_modules[name] = reason
            continue
        weight = module.effective_weight().detach().float().cpu()
        tensors, _ = encode_weight(weight, module.spec, module.mask, name=name)  # on the grid, or an error
        key = _weight_key(weight.t().numpy())
        if key in targets and targets[key].spec != module.spec:
            raise NxmiError(f"modules {targets[key].name} and {name} hold the same weights with different specs; "
                            f"the export cannot tell them apart")
        scales = expand_scales(tensors["scales"], weight.shape[0], module.spec.group_size)
        max_code = int((weight.abs().amax(dim=1) / scales).round().max()) if weight.numel() else 0
        targets.setdefault(key, _Target(name, tensors, module.spec, *weight.shape, max_code))
    plain = to_dense_(copy.deepcopy(model)).cpu().eval()
    _export_fp32(plain, input_names, path, fuse)
    if targets or embeddings != "fp32":
        proto = onnx.load(str(path))
        if targets:
            report.int8_modules, left = _quantize_graph(proto.graph, targets, u8_weights)
            found = set(report.int8_modules)
            for target in targets.values():
                if target.name not in found:
                    report.fp32_modules[target.name] = left.get(target.name, "its matmul was not found in the "
                                                                             "exported graph")
        if embeddings != "fp32":
            _compress_embeddings(proto.graph, _embedding_tables(plain), embeddings)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    report.file_bytes = path.stat().st_size
    report.dense_bytes = sum(p.numel() for p in plain.parameters()) * 4
    report.predicted_bytes = _predicted_bytes(plain, {k: t for k, t in targets.items()
                                                      if t.name in report.int8_modules}, embeddings)
    if check:
        report.max_logit_diff, report.agreement = _check(plain, path, input_names)
    return report


def load_for_export(model_dir: str | Path) -> nn.Module:
    """The model of a directory, ready for :func:`export_onnx`: a packed directory (``nxmi pack``)
    as :func:`~.load_packed` rebuilds it; a hardened directory (``plan.json`` beside the weights,
    from ``nxmi compress --out`` or ``nxmi train``) with its plan's wrappers frozen on the saved
    weights (nothing is projected again); any other model directory as it is (dense)."""
    from ..models import load_model
    from ..compression.layer import compress_, harden_
    from .pack import MANIFEST_FILE, PLAN_FILE, encode_weight, load_packed
    from ..compression.spec import CompressionPlan

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise NxmiError(f"model directory not found: {model_dir}")
    if (model_dir / MANIFEST_FILE).is_file():
        return load_packed(model_dir)
    model = load_model(str(model_dir)).eval()
    if (model_dir / PLAN_FILE).is_file():
        compress_(model, CompressionPlan.load(model_dir / PLAN_FILE).validate(model))
        for name, module in compressed_modules(model).items():
            if not module.spec.is_identity:
                encode_weight(module.weight, module.spec, name=name)  # the saved weights are the plan's, or an error
        harden_(model, project_weights=False)
    return model


def export_onnx_dir(model_dir: str | Path, out_dir: str | Path, int8: bool = True, fuse: bool = False,
                    embeddings: str | None = None, u8_weights: bool = False) -> OnnxExport:
    """Export the model of ``model_dir`` (see :func:`load_for_export`) to a new directory
    ``out_dir``: ``model.onnx``, ``config.json``, the tokenizer, ``plan.json`` (if any) and
    ``onnx.json`` (what :func:`export_onnx` reported). All or nothing."""
    import shutil

    from ..models import load_tokenizer
    from ..outputs import TASK_FILE, atomic_output_dir, require_free_output, write_json
    from .pack import PLAN_FILE

    if embeddings is not None:
        check_embeddings(embeddings)
    require_free_output(out_dir)
    model = load_for_export(model_dir)
    try:
        tokenizer = load_tokenizer(str(model_dir))
    except NxmiError:
        tokenizer = None  # a model directory without a tokenizer still exports
    input_names = None  # the graph takes what the tokenizer gives (RoBERTa's: no token_type_ids)
    if tokenizer is not None:
        import inspect

        accepted = inspect.signature(model.forward).parameters
        input_names = tuple(n for n in INPUT_NAMES if n in accepted and n in tokenizer.model_input_names) or None
    with atomic_output_dir(out_dir) as tmp:
        report = export_onnx(model, tmp / ONNX_FILE, int8=int8, fuse=fuse, input_names=input_names,
                             embeddings=embeddings, u8_weights=u8_weights)
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name in (PLAN_FILE, TASK_FILE):  # the plan, and the task record (nxmi evaluate needs no data flags)
            if (Path(model_dir) / name).is_file():
                shutil.copyfile(Path(model_dir) / name, tmp / name)
        write_json(tmp / REPORT_FILE, report.to_json() | {"source": str(model_dir), "int8": int8, "fuse": fuse,
                                                          "u8_weights": u8_weights})
    report.path = Path(out_dir) / ONNX_FILE
    return report


class OnnxClassifier(nn.Module):
    """An ONNX Runtime session behind the call of a Hugging Face sequence classifier:
    ``model(input_ids=..., attention_mask=...).logits`` (inputs the graph does not take are
    ignored), so :func:`nxmiformer.trials.evaluate` measures an exported file like any model."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        path = Path(path)
        if path.is_dir():
            path = path / ONNX_FILE
        if not path.is_file():
            raise NxmiError(f"ONNX model not found: {path} (write one with nxmi onnx)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise NxmiError(f"ONNX Runtime cannot load {path}: {' '.join(str(exc).split())[:300]}") from None
        self.path = path
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, **inputs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        feed = {name: inputs[name].cpu().numpy() for name in self.input_names}
        return SequenceClassifierOutput(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))


__all__ = ["ONNX_FILE", "OnnxClassifier", "OnnxExport", "export_onnx", "export_onnx_dir", "int8_servable",
           "integer_codes", "load_for_export"]

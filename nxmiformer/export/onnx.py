"""ONNX export of a hardened model, with its integer weights carried over exactly.

:func:`export_onnx` writes a graph that ONNX Runtime (or any ONNX runtime: only standard operators
are used) runs without nxmiformer:

* every hardened module with integer weights of at most 8 bits becomes the dynamic-quantization
  pattern ``DynamicQuantizeLinear`` (the input, per tensor, uint8) -> ``MatMulInteger`` with the
  module's own integer codes (``int8``; for codes beyond 7 bits ``uint8`` with zero point 128, the
  same integers, since ONNX Runtime's uint8 x int8 kernel saturates on CPUs without VNNI) -> ``Cast``
  -> ``Mul`` by the input scale times the module's own per-row scales. The codes and scales are the hardened ones (read back from the effective weight,
  checked to lie on the grid), not re-quantized: only the activations are rounded. ONNX Runtime
  fuses the pattern into its int8 kernel (``DynamicQuantizeMatMul``);
* everything else (dense fp32 and float16 modules, embeddings, LayerNorm, the classifier) stays
  fp32, as the hardened model computes it.

With ``fuse=True`` ONNX Runtime's BERT fusions run first and a fused ``Attention`` whose Q, K and V
are all integer becomes ``QAttention`` with the same codes and scales (ONNX Runtime only).

``int8=False`` exports the hardened model in fp32 only (the same logits as PyTorch up to float
rounding), the reference the int8 graph is measured against.

N:M zeros are stored as zero codes: ONNX Runtime has no sparse CPU kernel, so sparsity brings no
speed here (the packed format, :mod:`.pack`, is the small one on disk).
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
from .pack import GRID_TOLERANCE
from ..compression.quant import quantize_to_int

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
    (with the reason), and the largest logit difference from the PyTorch model on a check batch."""

    path: Path
    int8_modules: list[str] = field(default_factory=list)
    fp32_modules: dict[str, str] = field(default_factory=dict)
    max_logit_diff: float = float("nan")
    agreement: float = float("nan")

    def summary(self) -> str:
        kept = f", {len(self.fp32_modules)} compressed modules kept fp32" if self.fp32_modules else ""
        return (f"{self.path}: {len(self.int8_modules)} modules on int8 kernels{kept}; check batch: "
                f"max |logit difference| {self.max_logit_diff:.3g} vs the PyTorch model, "
                f"argmax agreement {self.agreement:.2%}")

    def to_json(self) -> dict:
        return {"file": self.path.name, "int8_modules": self.int8_modules, "fp32_modules": self.fp32_modules,
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


def _weight_key(weight_t) -> bytes:
    import numpy as np

    return np.ascontiguousarray(weight_t, dtype=np.float32).tobytes()


def _quantize_graph(graph, targets: dict[bytes, tuple[str, torch.Tensor, torch.Tensor]]) -> tuple[list[str], dict[str, str]]:
    """Put the target modules' matmuls (matched by the value of ``W^T``) on int8 kernels, in place:
    ``MatMul(x, W^T)`` becomes the standard dynamic-quantization pattern, and a fused ``Attention``
    whose packed ``[W_q^T | W_k^T | W_v^T]`` are all targets becomes ``QAttention``.

    Returns the module names replaced, and the targets left fp32 with the reason."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    quantized: dict[str, str] = {}  # input -> prefix of its DynamicQuantizeLinear outputs (shared by consumers)
    added: set[str] = set()
    replaced: list[str] = []
    left: dict[str, str] = {}
    nodes = []

    def weight(name: str):
        init = initializers.get(name)
        return None if init is None or len(init.dims) != 2 else numpy_helper.to_array(init)

    def add_initializers(stem: str, codes_t, scales) -> None:
        if stem not in added:
            added.add(stem)
            codes_t = np.asarray(codes_t).astype(np.int16)
            # codes beyond 7 bits go as uint8 (code + 128, zero point 128), the same integers: ONNX Runtime's
            # uint8 x int8 kernel on CPUs without VNNI (AVX2) adds pairs of products in int16 and saturates
            # there (255 * 127 * 2 > 32767); its uint8 x uint8 kernel does not
            unsigned = int(np.abs(codes_t).max(initial=0)) > SATURATION_FREE_CODE
            dtype, zero = (np.uint8, 128) if unsigned else (np.int8, 0)
            graph.initializer.extend([
                numpy_helper.from_array(np.ascontiguousarray(codes_t + zero, dtype=dtype), f"{stem}.weight_q"),
                numpy_helper.from_array(np.asarray(scales, dtype=np.float32), f"{stem}.weight_scale"),
                numpy_helper.from_array(np.full(len(scales), zero, dtype=dtype), f"{stem}.weight_zero_point"),
            ])

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
            name, codes, scales = target
            add_initializers(name, codes.t().numpy(), scales.numpy())
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
            names = [part[0] for part in parts if part is not None]
            attributes = {a.name for a in node.attribute}
            if len(names) == 3 and attributes <= {"num_heads", "unidirectional"} and len(node.input) <= 4 \
                    and len(node.output) == 1:
                stem = f"{node.name or 'Attention'}.qkv"
                add_initializers(stem, np.concatenate([part[1].t().numpy() for part in parts], axis=1),
                                 np.concatenate([part[2].numpy() for part in parts]))
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
    used = {i for node in nodes for i in node.input}
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return sorted(set(replaced)), left


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


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | Path, int8: bool = True, fuse: bool = False,
                input_names: tuple[str, ...] | None = None, check: bool = True) -> OnnxExport:
    """Write ``model`` (a sequence classifier whose compressed modules are hardened
    :class:`CompressedLinear` wrappers, as :func:`~.harden_` or :func:`~.load_packed` leave them)
    to the ONNX file ``path``.

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

    Raises:
        NxmiError: a compressed module is not hardened, or not on its spec's grid; a module
            uses activation quantization (``a8``...), which the export does not carry.
    """
    import inspect

    import onnx

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
    report = OnnxExport(path)
    targets: dict[bytes, tuple[str, torch.Tensor, torch.Tensor]] = {}
    for name, module in modules.items():
        reason = int8_servable(module) if int8 else "fp32 export"
        if reason is not None:
            report.fp32_modules[name] = reason
            continue
        codes, scales = integer_codes(module, name)
        key = _weight_key(module.effective_weight().detach().float().cpu().t().numpy())
        if key in targets and not torch.equal(targets[key][2], scales):
            raise NxmiError(f"modules {targets[key][0]} and {name} hold the same weights with different specs; "
                            f"the export cannot tell them apart")
        targets.setdefault(key, (name, codes, scales))
    plain = to_dense_(copy.deepcopy(model)).cpu().eval()
    _export_fp32(plain, input_names, path, fuse)
    if targets:
        proto = onnx.load(str(path))
        report.int8_modules, left = _quantize_graph(proto.graph, targets)
        found = set(report.int8_modules)
        for name, _, _ in targets.values():
            if name not in found:
                report.fp32_modules[name] = left.get(name, "its matmul was not found in the exported graph")
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
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


def export_onnx_dir(model_dir: str | Path, out_dir: str | Path, int8: bool = True, fuse: bool = False) -> OnnxExport:
    """Export the model of ``model_dir`` (see :func:`load_for_export`) to a new directory
    ``out_dir``: ``model.onnx``, ``config.json``, the tokenizer, ``plan.json`` (if any) and
    ``onnx.json`` (what :func:`export_onnx` reported). All or nothing."""
    import shutil

    from ..models import load_tokenizer
    from ..outputs import TASK_FILE, atomic_output_dir, require_free_output, write_json
    from .pack import PLAN_FILE

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
        report = export_onnx(model, tmp / ONNX_FILE, int8=int8, fuse=fuse, input_names=input_names)
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name in (PLAN_FILE, TASK_FILE):  # the plan, and the task record (nxmi evaluate needs no data flags)
            if (Path(model_dir) / name).is_file():
                shutil.copyfile(Path(model_dir) / name, tmp / name)
        write_json(tmp / REPORT_FILE, report.to_json() | {"source": str(model_dir), "int8": int8, "fuse": fuse})
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

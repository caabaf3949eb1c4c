"""ONNX export: the hardened integer weights carried over exactly, checked against an independent
PyTorch reference of the int8 graph; fp32 exports equal to the model; the directory command."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from nxmiformer.cli import main  # noqa: E402
from nxmiformer.compression import CompressionPlan, LayerSpec, compress_, compressed_modules, harden_  # noqa: E402
from nxmiformer.export import pack_dir  # noqa: E402
from nxmiformer.export.onnx import (  # noqa: E402
    OnnxClassifier, export_onnx, export_onnx_dir, int8_servable, integer_codes,
)
from nxmiformer.errors import NxmiError  # noqa: E402
from nxmiformer.models import load_model  # noqa: E402
from tests.conftest import tiny_bert  # noqa: E402

QKV = {"query", "key", "value"}


def saturating_cpu() -> bool:
    """An x86 CPU without AVX512-VNNI / AVX-VNNI, where ONNX Runtime's uint8 x int8 kernel adds
    pairs of products in int16 (codes beyond 63 may saturate: the export's ``u8_weights``)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_vnni" not in flags and "avx_vnni" not in flags


def dynamic_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX ``DynamicQuantizeLinear`` as its specification writes it (uint8, per tensor, the range
    widened to include 0, round half to even)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = torch.tensor((hi - lo) / 255.0, dtype=torch.float32)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    return q, scale, zero_point


class ReferenceInt8Linear(nn.Module):
    """``(q_x - zp) @ codes^T * (s_x * s_w) + bias`` in float64 from the module's own codes."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.codes, self.scales, self.bias = codes.double(), scales.double(), bias

    def forward(self, x):
        q, scale, zero_point = dynamic_quantize(x)
        y = ((q.double() - zero_point.double()) @ self.codes.t()) * (scale.double() * self.scales)
        y = y.float()
        return y if self.bias is None else y + self.bias


def reference_int8(model: nn.Module, names: list[str]) -> nn.Module:
    """A copy of the hardened model whose ``names`` compute the int8 graph in PyTorch."""
    ref = copy.deepcopy(model)
    for name in names:
        module = ref.get_submodule(name)
        codes, scales = integer_codes(module, name)
        parent, _, child = name.rpartition(".")
        setattr(ref.get_submodule(parent), child, ReferenceInt8Linear(codes, scales, module.bias))
    return ref


def hardened_tiny(plan, seed: int = 0) -> nn.Module:
    model = tiny_bert(seed, initializer_range=0.5)  # logits of a few units, so tolerances mean something
    plan = (CompressionPlan.by_component(model, plan) if isinstance(plan, dict)
            else CompressionPlan.uniform(model, LayerSpec.parse(plan)))
    compress_(model, plan)
    harden_(model)
    return model.eval()


def inputs(batch: int = 4, length: int = 12, seed: int = 3) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 120, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def run(path, feed) -> torch.Tensor:
    return OnnxClassifier(path)(**feed).logits


MIXED_QKV = {"query": "2:4:int8", "key": "dense:fp16", "value": "4:8:int4", "attn_out": "dense", "ffn_in": "2:8:int2",
             "ffn_out": "dense:int8"}
CASES = [  # plan, int8 modules with ONNX Runtime's fusions, with standard operators (of 12)
    ("2:4:int8", 12, 12),
    ("4:8:int4", 12, 12),
    ("dense:int8", 12, 12),
    ("1:8:int2", 12, 12),
    ("2:4:int8:g4", 12, 12),  # shared scales of 4 rows: still one scale per row
    ("2:4:fp16", 0, 0),
    (MIXED_QKV, 4, 8),  # fused attention needs Q, K and V all integer; unfused, query and value go int8
]


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "standard"])
@pytest.mark.parametrize("plan,fused,standard", CASES, ids=[str(c[0])[:30] for c in CASES])
def test_int8_graph_equals_an_independent_reference_of_the_hardened_codes(plan, fused, standard, fuse, tmp_path):
    model = hardened_tiny(plan)
    report = export_onnx(model, tmp_path / "model.onnx", fuse=fuse, embeddings="fp32", u8_weights=saturating_cpu())
    assert len(report.int8_modules) == (fused if fuse else standard)
    assert set(report.int8_modules) | set(report.fp32_modules) == set(compressed_modules(model))
    feed = inputs()
    with torch.no_grad():
        expected = reference_int8(model, report.int8_modules)(**feed).logits
        hardened = model(**feed).logits
    got = run(tmp_path / "model.onnx", feed)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if report.int8_modules:  # the activations' rounding is visible: the reference is not the fp32 model
        assert float((expected - hardened).abs().max()) > 10 * float((got - expected).abs().max())
    assert report.max_logit_diff < 0.5 and report.agreement >= 0.5


def test_requantized_weights_would_be_caught():
    """The reference distinguishes the int4 codes from an int8 re-quantization of the same weights
    (what ONNX Runtime's own quantizer would store): the check above can fail."""
    model = hardened_tiny("4:8:int4")
    names = list(compressed_modules(model))
    exact = reference_int8(model, names)
    requantized = copy.deepcopy(exact)
    for name in names:
        module = requantized.get_submodule(name)
        weight = module.codes * module.scales[:, None]
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        module.codes, module.scales = torch.round(weight / scales[:, None]), scales
    with torch.no_grad():
        diff = (exact(**inputs()).logits - requantized(**inputs()).logits).abs().max()
    assert diff > 1e-3  # ten times the tolerance of the test above


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "standard"])
def test_fp32_export_equals_the_model(fuse, tmp_path):
    model = hardened_tiny({"query": "2:4:int8", "ffn_in": "4:8:int4", "ffn_out": "dense:fp16"})
    report = export_onnx(model, tmp_path / "model.onnx", int8=False, fuse=fuse)
    assert report.int8_modules == [] and set(report.fp32_modules.values()) == {"fp32 export"}
    with torch.no_grad():
        torch.testing.assert_close(run(tmp_path / "model.onnx", inputs()), model(**inputs()).logits, atol=1e-5, rtol=1e-5)
    assert report.max_logit_diff < 1e-5 and report.agreement == 1.0


def test_fused_attention_reason_names_the_spec_mix(tmp_path):
    report = export_onnx(hardened_tiny(MIXED_QKV), tmp_path / "model.onnx", fuse=True)
    query = "bert.encoder.layer.0.attention.self.query"
    assert "Q, K or V on another spec" in report.fp32_modules[query]
    assert report.fp32_modules["bert.encoder.layer.0.attention.self.key"] == "16-bit float weights"
    assert "bert.encoder.layer.0.intermediate.dense" in report.int8_modules


def test_int8_servable_reasons():
    model = tiny_bert()
    compress_(model, CompressionPlan.uniform(model, LayerSpec.parse("2:4:int8")))
    module = model.bert.encoder.layer[0].attention.self.query
    assert int8_servable(module) == "not hardened"
    module.harden()
    assert int8_servable(module) is None


@pytest.mark.parametrize("prepare,match", [
    (lambda m: compress_(m, CompressionPlan.uniform(m, LayerSpec.parse("2:4:int8"))), "not hardened"),
    (lambda m: harden_(compress_(m, CompressionPlan.uniform(m, LayerSpec.parse("2:4:int8:a8")))), "activations"),
    (lambda m: _off_grid(m), "not on the int8 grid"),  # defensive: a wrapper's weight is on its grid
])
def test_bad_models_are_refused_and_nothing_is_written(prepare, match, tmp_path):
    model = tiny_bert()
    prepare(model)
    with pytest.raises(NxmiError, match=match):
        export_onnx(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def _off_grid(model):
    harden_(compress_(model, CompressionPlan.uniform(model, LayerSpec.parse("dense:int8"))))
    module = model.bert.encoder.layer[0].attention.self.query
    raw = module.weight.detach().clone()
    raw[:, 0] = raw.abs().amax(dim=1) * 0.5 + 1e-3  # between grid points, below each row's max-abs
    module.effective_weight = lambda: raw


# ----------------------------------------------------------------------------- directories and the CLI


def test_cli_exports_a_hardened_and_a_packed_directory_alike(tiny_model_dir, synthetic_glue_dir, tmp_path, capsys):
    hard, packed, onnx_hard, onnx_packed = (tmp_path / n for n in ("hard", "packed", "onnx-hard", "onnx-packed"))
    assert main(["compress", "--model", str(tiny_model_dir), "--plan", "4:8:int4", "--out", str(hard)]) == 0
    pack_dir(hard, packed)
    assert main(["onnx", "--model", str(hard), "--out", str(onnx_hard), "--embeddings", "fp32", "--u8-weights"]) == 0
    assert "12 modules on int8 kernels" in capsys.readouterr().out
    export_onnx_dir(packed, onnx_packed, embeddings="fp32", u8_weights=True)
    assert main(["onnx", "--model", str(packed), "--out", str(tmp_path / "fused"), "--fuse"]) == 0
    assert "12 modules on int8 kernels" in capsys.readouterr().out
    names = {p.name for p in onnx_hard.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "plan.json", "onnx.json"} <= names
    report = json.loads((onnx_hard / "onnx.json").read_text())
    assert len(report["int8_modules"]) == 12 and report["int8"] and not report["fuse"]
    feed = {k: v.clamp(max=load_model(str(hard)).config.vocab_size - 1) for k, v in inputs().items()}
    torch.testing.assert_close(run(onnx_hard, feed), run(onnx_packed, feed), atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # the saved hardened weights are read back, not projected again
        model = load_model(str(hard)).eval()
        expected = reference_int8(_wrapped(model, hard), report["int8_modules"])(**feed).logits
    torch.testing.assert_close(run(onnx_hard, feed), expected, atol=2e-4, rtol=1e-3)

    args = ["evaluate", "--task", "sst2", "--data-dir", str(synthetic_glue_dir), "--json"]
    assert main([*args, "--model", str(onnx_hard)]) == 0
    onnx_metrics = json.loads(capsys.readouterr().out)
    assert main([*args, "--model", str(hard)]) == 0
    torch_metrics = json.loads(capsys.readouterr().out)
    assert abs(onnx_metrics["eval_loss"] - torch_metrics["eval_loss"]) < 0.05


def _wrapped(model, hard_dir):
    compress_(model, CompressionPlan.load(hard_dir / "plan.json"))
    return harden_(model, project_weights=False)


def test_the_export_loads_without_nxmiformer(tiny_model_dir, tmp_path):
    hard, out = tmp_path / "hard", tmp_path / "onnx"
    assert main(["compress", "--model", str(tiny_model_dir), "--plan", "2:4:int8", "--out", str(hard)]) == 0
    assert main(["onnx", "--model", str(hard), "--out", str(out)]) == 0
    script = (
        "import sys, onnxruntime, transformers\n"
        f"tok = transformers.AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"session = onnxruntime.InferenceSession({str(out / 'model.onnx')!r})\n"
        "feed = dict(tok(['a good film', 'bad'], padding=True, return_tensors='np'))\n"
        "logits = session.run(['logits'], {i.name: feed[i.name] for i in session.get_inputs()})[0]\n"
        "assert logits.shape == (2, 2), logits.shape\n"
        "assert not [m for m in sys.modules if m.startswith('nxmiformer')]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("setup,args,match", [
    ("missing", [], "model directory not found"),
    ("busy", [], "already exists and is not empty"),
    ("soft", [], "is not 4:8 sparse"),
    ("hardened", ["--embeddings", "int3"], "unknown embeddings storage 'int3'; allowed: int8, int4, fp16, fp32"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(setup, args, match, tiny_model_dir, tmp_path, capsys):
    model_dir, out = tmp_path / "model", tmp_path / "out"
    if setup == "missing":
        model_dir = tmp_path / "nowhere"
    else:
        assert main(["compress", "--model", str(tiny_model_dir), "--plan", "4:8:int4", "--out", str(model_dir)]) == 0
    if setup == "busy":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    if setup == "soft":  # a plan.json beside weights that were never hardened with it
        model = load_model(str(tiny_model_dir))
        model.save_pretrained(model_dir)
    capsys.readouterr()
    assert main(["onnx", "--model", str(model_dir), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and err.startswith("nxmi onnx: error:")
    assert (not out.exists()) or [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def decoded(path, names: list[str]) -> dict:
    """The values of graph tensors ``names`` that depend on initializers only (the decoded codes), computed
    by ONNX's own reference implementation (``onnx.reference``), not by ONNX Runtime."""
    import onnx
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    producer = {out: node for node in model.graph.node for out in node.output}
    needed, stack = [], list(names)
    while stack:  # the nodes the names depend on
        node = producer.get(stack.pop())
        if node is not None and node not in needed:
            needed.append(node)
            stack += list(node.input)
    order = [node for node in model.graph.node if node in needed]
    outputs = [helper.make_empty_tensor_value_info(name) for name in names]
    graph = helper.make_graph(order, "decode", [], outputs, initializer=model.graph.initializer)
    sub = helper.make_model(graph, opset_imports=model.opset_import)
    return dict(zip(names, ReferenceEvaluator(sub).run(None, {})))


@pytest.mark.parametrize("plan,u8,dtype,zero", [("dense:int8", False, "int8", 0), ("dense:int8", True, "uint8", 128),
                                                ("4:8:int4", True, "int8", 0), ("2:4:int2", False, "int8", 0),
                                                ("4:8:int3:g4", False, "int8", 0)])
def test_codes_decode_to_the_modules_own_integers(plan, u8, dtype, zero, tmp_path):
    # ONNX Runtime's uint8 x int8 kernel saturates int16 pair sums on CPUs without VNNI (AVX2): with u8_weights,
    # codes beyond 63 are stored as code + 128 with zero point 128, which its uint8 x uint8 kernel computes exactly
    import onnx
    from onnx import numpy_helper

    model = hardened_tiny(plan)
    report = export_onnx(model, tmp_path / "model.onnx", fuse=False, u8_weights=u8)
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(tmp_path / "model.onnx").graph.initializer}
    for name in report.int8_modules:
        codes, scales = integer_codes(model.get_submodule(name), name)
        q = decoded(tmp_path / "model.onnx", [f"{name}.weight_q"])[f"{name}.weight_q"]
        zp = stored[f"{name}.weight_zero_point"]
        assert q.dtype.name == dtype and (zp == zero).all()
        assert (q.astype("int32") - zero == codes.t().numpy()).all()
        torch.testing.assert_close(torch.tensor(stored[f"{name}.weight_scale"]), scales)


@pytest.mark.parametrize("plan,bits_per_weight", [("2:4:int4", 3), ("2:4:int2", 2), ("1:4:int2", 1),
                                                  ("4:8:int3", 3), ("dense:int8", 8)])
def test_codes_are_stored_at_their_width_and_folded_at_load(plan, bits_per_weight, tmp_path):
    """The file holds kept values at their bit width and N:M positions (what the packed format
    holds), not int8 matrices; ONNX Runtime folds the decoding nodes into constants at load."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from nxmiformer.export.onnx import DECODE_OPS

    model = hardened_tiny(plan)
    report = export_onnx(model, tmp_path / "model.onnx", fuse=False, embeddings="fp32")
    graph = onnx.load(tmp_path / "model.onnx").graph
    stored = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for name in report.int8_modules:
        module = model.get_submodule(name)
        packed = sum(stored[key].nbytes for key in stored if key.startswith(f"{name}.") and key.endswith(".packed"))
        assert packed == pytest.approx(module.weight.numel() * bits_per_weight / 8, abs=2)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # a portable dump
    ort.InferenceSession(str(tmp_path / "model.onnx"), options, providers=["CPUExecutionProvider"])
    loaded = {node.op_type for node in onnx.load(tmp_path / "loaded.onnx").graph.node}
    assert not loaded & DECODE_OPS and "MatMulInteger" in loaded
    assert report.file_bytes == (tmp_path / "model.onnx").stat().st_size
    # the tensors (not the graph, which outweighs them in a model this small) as the accounting predicts
    assert sum(value.nbytes for value in stored.values()) == pytest.approx(report.predicted_bytes, rel=0.1)


@pytest.mark.parametrize("mode,row_error", [("fp32", 0.0), ("fp16", 2.0 ** -11), ("int8", 0.5 / 127),
                                            ("int4", 0.5 / 7)])
def test_embedding_tables_are_stored_as_asked(mode, row_error, tmp_path):
    """Each table's decoded copy (ONNX's reference implementation) is within half a step of its
    scale (a row's max-abs / qmax) of the model's; the file shrinks with the width."""
    import onnx
    from onnx import numpy_helper

    model = hardened_tiny("2:4:int8")
    report = export_onnx(model, tmp_path / "model.onnx", embeddings=mode)
    assert report.embeddings == mode
    if mode == "fp32":
        return
    tables = {name: module.weight.detach() for name, module in model.named_modules() if isinstance(module, nn.Embedding)}
    names = [f"{name}/table" for name in tables]
    assert {n.output[0] for n in onnx.load(tmp_path / "model.onnx").graph.node} >= set(names)
    values = decoded(tmp_path / "model.onnx", names)
    for name, table in tables.items():
        error = (torch.from_numpy(values[f"{name}/table"]) - table).abs()
        limit = table.abs().amax(dim=1, keepdim=True) * row_error * 1.01 + 1e-7
        assert (error <= limit).all(), name
    export_onnx(model, tmp_path / "fp32.onnx", embeddings="fp32")
    fp32, stored = (sum(numpy_helper.to_array(i).nbytes for i in onnx.load(tmp_path / name).graph.initializer)
                    for name in ("fp32.onnx", "model.onnx"))
    table_bytes = sum(t.numel() for t in tables.values()) * 4
    width = {"fp16": 2, "int8": 1, "int4": 0.5}[mode]
    scale_bytes = sum(t.shape[0] for t in tables.values()) * 2 if mode.startswith("int") else 0  # fp16, one a row
    # the tensors the file holds (in a model this small the graph outweighs them)
    assert fp32 - stored == pytest.approx(table_bytes * (1 - width / 4) - scale_bytes, rel=0.02)

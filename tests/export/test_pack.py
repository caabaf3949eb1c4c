import json
import math
import struct

import numpy as np
import pytest
import torch
from torch import nn

from nxmiformer.cli import main
from nxmiformer.compression import (
    CompressedLinear, CompressionPlan, LayerSpec, compress_, compressed_modules, compressible_modules, current_plan,
    harden_, ratio_table, to_dense_,
)
from nxmiformer.export import (
    PackReport, decode_weight, encode_weight, load_packed, pack_bits, pack_dir, pack_model, unpack_bits, unpack_dir,
)
from nxmiformer.export.pack import COMPRESSED_FILE, MANIFEST_FILE
from nxmiformer.errors import NxmiError
from nxmiformer.models import load_model
from tests.conftest import tiny_bert

# Wide enough that scales are a realistic share of a module's bytes: at hidden 128 a 1:4:int8 row
# holds 32 value + 8 index bytes next to a 4-byte float32 scale (2 accounted), so its tensor bytes
# are 3.6% over the accounting. The safetensors header (~110 bytes per tensor) is not: at these
# widths it adds about 3% more, so size checks here compare tensor bytes and check that the rest of
# the file is exactly the header; the whole file is compared at MiniLM width further down.
DIMS = dict(hidden_size=128, intermediate_size=512, num_attention_heads=2)
SPECS = ["2:4:int8", "2:4:int4", "4:8:int4", "1:4:int8", "2:8:int8", "dense:int8", "dense:int4", "2:4:fp16",
         "2:4:int8:g8", "4:8:int2:gtensor", "dense:fp16", "2:4",
         # --menu fine's options: 3-bit integers and 3:8 / 6:8 / 3:4 patterns
         "3:8:int4", "4:8:int3", "6:8:int2", "3:4:int3",
         # every scale method: the hardened scale is read back from max-abs, bit for bit
         "2:4:int4:max", "2:4:int4:mse", "2:4:int4:lsq", "4:8:int2:g8:lsq", "dense:int4:g16:lsq", "2:4:int8:max"]


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 120, (4, 12), generator=g)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def hardened(plan_of, seed: int = 0, **dims):
    """A tiny BERT compressed with ``plan_of(model)`` and hardened; returns (model, plan)."""
    model = tiny_bert(seed, **(dims or DIMS))
    plan = plan_of(model)
    harden_(compress_(model, plan))
    return model, plan


def without_identity(plan: CompressionPlan) -> CompressionPlan:
    return CompressionPlan({name: spec for name, spec in plan.items() if not spec.is_identity})


def safetensors_header_bytes(path) -> int:
    """The 8-byte length prefix plus the JSON header of a safetensors file (its format)."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


# ----------------------------------------------------------------------------- bit packing


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 1001])
def test_pack_bits_round_trip(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    values = torch.from_numpy(rng.integers(0, 2**bits, count, dtype=np.int64))
    packed = pack_bits(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, count).long(), values)


def test_pack_bits_layout_is_little_endian_lsb_first():
    # 1, 2, 3 as 2-bit fields: bits 10 01 11 (LSB first) -> 0b00111001
    assert pack_bits(torch.tensor([1, 2, 3]), 2).tolist() == [0b00111001]
    assert pack_bits(torch.tensor([5, 1]), 3).tolist() == [0b00001101]


@pytest.mark.parametrize("call, match", [
    (lambda: pack_bits(torch.tensor([4]), 2), r"\[0, 3\] for 2 bits"),
    (lambda: pack_bits(torch.tensor([-1]), 3), r"\[0, 7\]"),
    (lambda: pack_bits(torch.tensor([0]), 9), "1..8"),
    (lambda: unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 7), "need 4 uint8 bytes"),
])
def test_pack_bits_rejects_bad_input(call, match):
    with pytest.raises(NxmiError, match=match):
        call()


# ----------------------------------------------------------------------------- one weight


@pytest.mark.parametrize("spec", ["2:4:int8", "4:8:int3", "dense:int4", "2:4:int8:g4", "dense:int2:gtensor"])
def test_scales_recovered_exactly_including_zero_rows_and_groups(spec):
    spec = LayerSpec.parse(spec)
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    w[3] = 0.0  # an all-zero row: its scale is 1.0, not NaN
    w[8:12] = 0.0  # an all-zero scale group for g4
    w[5, :8] = 0.0  # zero groups inside a row: kept positions fall on zeros
    linear = nn.Linear(32, 16)
    with torch.no_grad():
        linear.weight.copy_(w)
    wrapped = CompressedLinear(linear, spec)
    wrapped.harden()
    effective = wrapped.effective_weight().detach()
    tensors, error = encode_weight(effective, spec, wrapped.mask, "probe")
    decoded, mask = decode_weight(tensors, spec, 16, 32, "probe")
    assert error == 0.0
    assert torch.equal(decoded, effective)  # bit-exact, not just close
    assert torch.equal(decoded[3], torch.zeros(32))
    if spec.is_sparse:
        assert torch.equal(mask, wrapped.mask)
    else:
        assert mask is None


@pytest.mark.parametrize("spec, match", [
    ("2:4:int8", r"not 2:4 sparse: row 0, inputs 0\.\.3 hold 4 nonzero weights \(at most 2"),
    ("dense:int8", r"not on the int8 grid of spec dense:int8"),
    ("dense:fp16", r"not float16 values"),
])
def test_encode_rejects_weights_that_were_not_hardened(spec, match):
    torch.manual_seed(0)
    with pytest.raises(NxmiError, match=match):
        encode_weight(torch.randn(8, 16) + 3.0, spec, name="probe")


def test_encode_rejects_weights_hardened_with_another_spec():
    wrapped = CompressedLinear(nn.Linear(16, 8), LayerSpec.parse("2:4:int4"))
    wrapped.harden()
    with pytest.raises(NxmiError, match="module probe: weights are not on the int8 grid"):
        encode_weight(wrapped.effective_weight().detach(), "2:4:int8", name="probe")


# ----------------------------------------------------------------------------- whole models


def check_sizes(report: PackReport, model, plan, out_dir) -> None:
    """Tensor bytes within 5% of the storage accounting; the rest of the file is the header."""
    table = ratio_table(model, plan).set_index("module")
    for row in report.modules:
        assert row.storage_bytes == pytest.approx(table.loc[row.module, "storage_bits"] / 8)
        # at least the accounting (it counts 16-bit scales, we store 32), at most 5% over
        assert row.storage_bytes <= row.tensor_bytes <= 1.05 * row.storage_bytes, row
    assert 1.0 <= report.ratio <= 1.05
    # no hidden bytes: the file is exactly the safetensors header plus our tensors
    path = out_dir / COMPRESSED_FILE
    assert report.file_bytes == path.stat().st_size
    assert report.header_bytes == safetensors_header_bytes(path)


@pytest.mark.parametrize("spec", SPECS)
def test_uniform_round_trip(spec, batch, tmp_path):
    model, plan = hardened(lambda m: CompressionPlan.uniform(m, spec))
    logits = model(**batch).logits.detach()
    report = pack_model(model, plan, tmp_path / "packed")

    loaded = load_packed(tmp_path / "packed")
    assert current_plan(loaded) == plan
    assert (loaded(**batch).logits - logits).abs().max() <= 1e-4
    assert not loaded.training
    assert len(report.modules) == 12
    check_sizes(report, model, plan, tmp_path / "packed")
    # the decoded weights are the hardened model's effective weights, bit for bit
    plain = load_packed(tmp_path / "packed", wrap=False)
    assert not compressed_modules(plain)
    for name, module in compressed_modules(model).items():
        assert torch.equal(plain.get_submodule(name).weight, module.effective_weight().detach())
        if module.spec.is_sparse:
            assert torch.equal(compressed_modules(loaded)[name].mask, module.mask)


def heterogeneous_plan(model) -> CompressionPlan:
    names = [cm.name for cm in compressible_modules(model)]
    plan = dict(CompressionPlan.by_component(model, {
        "query": "2:4:int8", "key": "2:4:int8:a8", "value": "2:4:int4", "attn_out": "2:4:fp16",
        "ffn_in": "4:8:int4:g16", "ffn_out": "dense:int8",
    }))
    plan[names[0]] = LayerSpec.parse("dense")  # explicit dense fp32: stays in model.safetensors
    plan[names[-1]] = LayerSpec.parse("dense:int4")
    del plan[names[1]]  # unplanned: dense too
    return CompressionPlan(plan, meta={"note": "heterogeneous"})


def test_heterogeneous_round_trip(batch, tmp_path, tiny_tokenizer):
    model, plan = hardened(heterogeneous_plan)
    logits = model(**batch).logits.detach()
    report = pack_model(model, plan, tmp_path / "packed", tokenizer=tiny_tokenizer)
    assert (tmp_path / "packed" / "tokenizer.json").is_file()
    assert len(report.table()) == 10 and set(report.table()["spec"]) >= {"2:4:fp16", "dense:int4"}
    loaded = load_packed(tmp_path / "packed")
    assert current_plan(loaded) == without_identity(plan)
    assert CompressionPlan.load(tmp_path / "packed" / "plan.json").meta == {"note": "heterogeneous"}
    assert (loaded(**batch).logits - logits).abs().max() <= 1e-4  # act_bits apply on both sides
    assert len(report.modules) == 10
    check_sizes(report, model, plan, tmp_path / "packed")
    manifest = json.loads((tmp_path / "packed" / MANIFEST_FILE).read_text())
    assert manifest["format"] == "nxmiformer.packed" and manifest["version"] == 1
    assert {entry["spec"] for entry in manifest["modules"].values()} == {
        "2:4:int8", "2:4:int8:a8", "2:4:int4", "2:4:fp16", "4:8:int4:g16", "dense:int8", "dense:int4"}


@pytest.mark.parametrize("spec", ["2:4:int8", "2:4:int4", "1:4:int8", "3:8:int3"])
def test_file_within_5_percent_of_storage_at_minilm_width(spec, tmp_path):
    # at MiniLM's 384/1536 the safetensors header (~100 bytes per tensor) is well under 1% of a
    # module, so the whole file, header included, lands within 5% of the accounting
    model, plan = hardened(lambda m: CompressionPlan.uniform(m, spec), hidden_size=384, intermediate_size=1536,
                           num_attention_heads=6, num_hidden_layers=1)
    report = pack_model(model, plan, tmp_path / "packed")
    assert 1.0 <= report.file_ratio <= 1.05
    assert report.header_bytes < 0.01 * report.file_bytes
    assert report.scale_overhead_bytes == (4 * 384 + 1536 + 384) * 2  # one layer: 16 extra bits per row scale


def test_pack_dir_and_unpack_dir_of_a_compress_directory(tiny_model_dir, tmp_path, batch, capsys):
    hard_dir, packed_dir, unpacked_dir = tmp_path / "hard", tmp_path / "packed", tmp_path / "unpacked"
    assert main(["compress", "--model", str(tiny_model_dir), "--plan", "4:8:int4", "--out", str(hard_dir)]) == 0
    hard = load_model(str(hard_dir)).eval()
    batch = {k: v.clamp(max=hard.config.vocab_size - 1) for k, v in batch.items()}

    report = pack_dir(hard_dir, packed_dir)
    assert report == PackReport.load(packed_dir)
    assert "storage accounting" in report.summary()
    names = {p.name for p in packed_dir.iterdir()}
    assert {"compressed.safetensors", "model.safetensors", "pack.json", "plan.json", "config.json"} <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    assert CompressionPlan.load(packed_dir / "plan.json") == CompressionPlan.load(hard_dir / "plan.json")

    loaded = load_packed(packed_dir)
    assert (loaded(**batch).logits - hard(**batch).logits).abs().max() <= 1e-4

    assert unpack_dir(packed_dir, unpacked_dir) == unpacked_dir
    unpacked = load_model(str(unpacked_dir))
    for key, value in hard.state_dict().items():
        assert torch.equal(unpacked.state_dict()[key], value), key
    assert CompressionPlan.load(unpacked_dir / "plan.json") == CompressionPlan.load(hard_dir / "plan.json")
    assert (unpacked_dir / "tokenizer.json").is_file() and not (unpacked_dir / "pack.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


# ----------------------------------------------------------------------------- bad inputs


def _soft(model, plan):
    compress_(model, plan)  # wrapped but not hardened


@pytest.mark.parametrize("prepare, match", [
    (lambda model, plan: None, r"not 2:4 sparse: row \d+, inputs"),  # never compressed
    (_soft, "is not hardened; call harden_"),
    (lambda model, plan: harden_(compress_(model, CompressionPlan.uniform(model, "4:8:int4"))),
     "is wrapped with spec 4:8:int4 but the plan says 2:4:int8"),
    (lambda model, plan: to_dense_(harden_(compress_(model, CompressionPlan.uniform(model, "2:4:int4")))),
     "not on the int8 grid"),
])
def test_pack_model_rejects_models_not_hardened_with_the_plan(prepare, match, tmp_path):
    model = tiny_bert(**DIMS)
    plan = CompressionPlan.uniform(model, "2:4:int8")
    prepare(model, plan)
    with pytest.raises(NxmiError, match=match):
        pack_model(model, plan, tmp_path / "packed")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_refuses_non_empty_out_dir(tmp_path):
    model, plan = hardened(lambda m: CompressionPlan.uniform(m, "2:4:int8"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(NxmiError, match="already exists and is not empty"):
        pack_model(model, plan, tmp_path / "out")
    pack_model(model, plan, tmp_path / "packed")
    with pytest.raises(NxmiError, match="already exists and is not empty"):
        unpack_dir(tmp_path / "packed", tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()  # an existing empty directory is fine
    assert pack_model(model, plan, tmp_path / "empty").path == tmp_path / "empty"


def test_pack_dir_needs_plan_json(tiny_model_dir, tmp_path):
    with pytest.raises(NxmiError, match=r"has no plan\.json; pack needs a hardened model directory"):
        pack_dir(tiny_model_dir, tmp_path / "packed")
    with pytest.raises(NxmiError, match="model directory not found"):
        pack_dir(tmp_path / "missing", tmp_path / "packed")
    assert not (tmp_path / "packed").exists()


def test_load_packed_rejects_other_directories(tiny_model_dir, tmp_path):
    with pytest.raises(NxmiError, match=r"not a packed model directory: no pack\.json"):
        load_packed(tiny_model_dir)
    model, plan = hardened(lambda m: CompressionPlan.uniform(m, "2:4:int8"))
    pack_model(model, plan, tmp_path / "packed")
    manifest_path = tmp_path / "packed" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(NxmiError, match="unsupported packed format version 99; this nxmiformer reads version 1"):
        load_packed(tmp_path / "packed")
    name = next(iter(manifest["modules"]))
    manifest["modules"][name]["spec"] = "2:4:int4"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(NxmiError, match=f"packs {name} as 2:4:int4 but plan.json says 2:4:int8"):
        load_packed(tmp_path / "packed")


def test_a_packed_bare_encoder_loads_as_its_own_class(tmp_path):
    from transformers import BertModel

    model = BertModel(tiny_bert().config).eval()
    plan = CompressionPlan.uniform(model, "2:4:int8")
    compress_(model, plan)
    harden_(model)
    pack_model(model, plan, tmp_path / "packed")
    loaded = load_packed(tmp_path / "packed", wrap=False)
    assert type(loaded) is BertModel
    ids = torch.tensor([[1, 5, 7, 2]])
    assert (loaded(input_ids=ids).last_hidden_state - model(input_ids=ids).last_hidden_state).abs().max() <= 1e-4

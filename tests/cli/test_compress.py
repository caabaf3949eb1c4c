import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from nxmiformer.cli import main
from nxmiformer.compression import CompressionPlan, compressible_modules
from tests.conftest import tiny_bert


@pytest.fixture
def tiny_dir(tmp_path):
    path = tmp_path / "tiny"
    tiny_bert().save_pretrained(path)
    return path


def test_compress_default_model_prints_table_and_both_ratios(capsys):
    assert main(["compress", "--model", "default", "--plan", "2:4:int8"]) == 0
    out = capsys.readouterr().out
    assert "paper: 87.5000%" in out
    # MiniLM-L6-H384: 6 x (4 x 384x384 + 2 x 384x1536) weights, 6 x 2688 rows with one scale each
    params, rows = 6 * (4 * 384 * 384 + 2 * 384 * 1536), 6 * (4 * 384 + 1536 + 384)
    storage = 1 - (5 * params + 16 * rows) / (32 * params)
    assert f"storage: {storage:.4%}" in out
    assert out.count("2:4:int8") >= 36 and "ffn_out" in out


def test_compress_out_saves_hardened_model_and_plan(tiny_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["compress", "--model", str(tiny_dir), "--plan", "4:8:int4", "--out", str(out_dir)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out_dir)
    for cm in compressible_modules(model):
        w = cm.module.weight
        assert torch.all((w != 0).reshape(w.shape[0], -1, 8).sum(-1) <= 4)
        assert len(torch.unique(w[0].abs())) <= 8  # zero + 7 int4 levels per row
    plan = CompressionPlan.load(out_dir / "plan.json")
    assert set(map(str, plan.values())) == {"4:8:int4"}
    assert plan.meta["ratio_paper"] == pytest.approx(0.9375)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_plan_json_input(tiny_dir, tmp_path, capsys):
    model = tiny_bert()
    plan = CompressionPlan.by_component(model, {"query": "2:4:int4", "ffn_in": "dense:int8"})
    plan.save(tmp_path / "plan.json")
    assert main(["compress", "--model", str(tiny_dir), "--plan", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "2:4:int4" in out and "dense:int8" in out


def _plan_file(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


BAD_INPUTS = [
    ("n > m", lambda d, t: ["--model", d, "--plan", "5:4:int8"], "n=5"),
    ("m does not divide width", lambda d, t: ["--model", d, "--plan", "2:3:int8"], "m=3"),
    ("bits 9", lambda d, t: ["--model", d, "--plan", "2:4:int9"], "bits=9"),
    ("unknown module", lambda d, t: ["--model", d, "--plan", _plan_file(t, {"schema": "nxmiformer.plan", "version": 1, "modules": {"bert.encoder.layer.0.attention.self.qury": "2:4"}})], "closest: bert.encoder.layer.0.attention.self.query"),
    ("malformed json", lambda d, t: ["--model", d, "--plan", _plan_file(t, "{oops")], "malformed plan JSON"),
    ("wrong version", lambda d, t: ["--model", d, "--plan", _plan_file(t, {"schema": "nxmiformer.plan", "version": 3, "modules": {}})], "version 3"),
    ("missing model path", lambda d, t: ["--model", str(t / "nowhere"), "--plan", "2:4:int8"], "nowhere"),
    ("missing plan file", lambda d, t: ["--model", d, "--plan", str(t / "no.json")], "no.json"),
    ("component the model lacks", lambda d, t: ["--model", d, "--plan", "qkv=2:4:int8"],
     "its components: query, key, value, attn_out, ffn_in, ffn_out"),
    ("unknown component", lambda d, t: ["--model", d, "--plan", "querry=2:4:int8,ffn_in=2:4:int8"],
     "unknown component(s) ['querry']"),
    ("malformed component item", lambda d, t: ["--model", d, "--plan", "query=2:4:int8,ffn_in"], "COMPONENT=SPEC"),
    ("component twice", lambda d, t: ["--model", d, "--plan", "query=2:4:int8,query=dense"], "each component once"),
    ("bad component spec", lambda d, t: ["--model", d, "--plan", "query=2:4:int9"], "bits=9"),
    ("components select nothing", lambda d, t: ["--model", d, "--plan", "query=dense,ffn_in=4:4"], "compresses nothing"),
    ("uniform dense", lambda d, t: ["--model", d, "--plan", "dense"], "compresses nothing"),
    ("empty plan file", lambda d, t: ["--model", d, "--plan", _plan_file(t, {"schema": "nxmiformer.plan", "version": 1, "modules": {}})],
     "names no module"),
]


@pytest.mark.parametrize("label,make_args,needle", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_one_line_exit_2_nothing_written(label, make_args, needle, tiny_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code = main(["compress", *make_args(str(tiny_dir), tmp_path), "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_output_is_refused(tiny_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    assert main(["compress", "--model", str(tiny_dir), "--plan", "2:4:int8", "--out", str(out_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out_dir.iterdir()] == ["keep.txt"]


def test_python_dash_m_and_debug_traceback(tiny_dir):
    ok = subprocess.run([sys.executable, "-m", "nxmiformer", "compress", "--model", str(tiny_dir), "--plan", "dense:int8"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "paper: 75.0000%" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "nxmiformer", "--debug", "compress", "--model", str(tiny_dir), "--plan", "2:4:int9"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "nxmiformer", "compress"], capture_output=True, text=True)
    assert usage.returncode == 2 and "--plan" in usage.stderr and len(usage.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- a fused model (ModernBERT)


@pytest.fixture
def modernbert_dir(tmp_path):
    from tests.conftest import tiny_modernbert

    path = tmp_path / "modernbert"
    tiny_modernbert().save_pretrained(path)
    return path


def test_compress_lists_a_fused_models_roles(modernbert_dir, capsys):
    assert main(["compress", "--model", str(modernbert_dir), "--plan", "2:4:int8"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:9]]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (str(layer), role, shape) for layer in "01"
        for role, shape in (("qkv", "96x32"), ("attn_out", "32x32"), ("ffn_in", "128x32"), ("ffn_out", "32x64"))]


@pytest.mark.parametrize("plan,changed", [
    ("qkv=2:4:int4,ffn_in=2:4:int8", {"attn.Wqkv", "mlp.Wi"}),
    ("attn_out=dense:int8,ffn_out=4:8:int4", {"attn.Wo", "mlp.Wo"}),
])
def test_compress_by_component_changes_the_named_matrices(plan, changed, modernbert_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["compress", "--model", str(modernbert_dir), "--plan", plan, "--out", str(out_dir)]) == 0
    before = AutoModelForSequenceClassification.from_pretrained(modernbert_dir).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(out_dir).state_dict()
    differ = {k.removesuffix(".weight") for k in before if not torch.equal(before[k], after[k])}
    assert differ == {f"model.layers.{layer}.{ending}" for layer in range(2) for ending in changed}
    saved = CompressionPlan.load(out_dir / "plan.json")
    assert set(saved) == differ


@pytest.mark.parametrize("plan,needle", [
    ("query=2:4:int8", "give 'qkv' one spec"),
    ("key=2:4:int8,ffn_in=2:4:int8", "its components: qkv, attn_out, ffn_in, ffn_out"),
    ("qkv=dense", "compresses nothing"),
])
def test_compress_by_component_on_a_fused_model_bad_input(plan, needle, modernbert_dir, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["compress", "--model", str(modernbert_dir), "--plan", plan, "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out_dir.exists()

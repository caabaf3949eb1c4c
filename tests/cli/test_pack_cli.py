"""nxmi pack / nxmi unpack on the tiny model: logits survive, sizes are reported, bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

from nxmiformer.cli import main
from nxmiformer.compression import current_plan
from nxmiformer.export import load_packed
from nxmiformer.models import load_model


@pytest.fixture(scope="module")
def hardened_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hardened") / "m"
    assert main(["compress", "--model", str(tiny_model_dir), "--plan", "2:4:int8", "--out", str(out)]) == 0
    return out


def logits(model):
    ids = torch.randint(5, 40, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_pack_then_unpack_round_trip(hardened_dir, tmp_path, capsys):
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    assert main(["pack", "--model", str(hardened_dir), "--out", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "saved packed model" in out
    manifest = json.loads((packed / "pack.json").read_text())
    assert len(manifest["modules"]) == 12
    expected = logits(load_model(str(hardened_dir)).eval())
    model = load_packed(packed)
    torch.testing.assert_close(logits(model), expected, atol=1e-4, rtol=0)
    assert {str(s) for s in current_plan(model).values()} == {"2:4:int8"}
    assert main(["unpack", "--model", str(packed), "--out", str(unpacked)]) == 0
    torch.testing.assert_close(logits(load_model(str(unpacked)).eval()), expected, atol=1e-4, rtol=0)
    assert (unpacked / "plan.json").is_file()


BAD = [
    ("pack", "no-plan", "plan.json"),
    ("pack", "not-empty", "not empty"),
    ("unpack", "not-packed", "pack"),
]


@pytest.mark.parametrize("command,case,needle", BAD)
def test_bad_pack_input_is_one_line_and_writes_nothing(command, case, needle, tiny_model_dir, hardened_dir, tmp_path, capsys):
    out = tmp_path / "out"
    source = {"no-plan": tiny_model_dir, "not-empty": hardened_dir, "not-packed": hardened_dir}[case]
    if case == "not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("x")
    assert main([command, "--model", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert (not out.exists()) or sorted(p.name for p in out.iterdir()) == ["keep.txt"]

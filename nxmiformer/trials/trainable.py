"""The Ray Tune function trainable that runs one compression trial.

Its ``config`` (the Tune ``param_space`` of one trial) holds:

* ``candidate``: what to train: ``{"plan": CompressionPlan.to_dict()}`` and optionally the
  ``kind``, ``heuristic_score``, ``ratio_paper``, ``ratio_storage`` and ``target_ratio`` the search gave it
* ``trial``: a ``TrialConfig.to_dict()``
* ``dense_path`` (optional): a finished warm-start directory shared through the storage path

Every evaluation is reported with ``tune.report`` in the field names of
:class:`~nxmiformer.records.TrialRecord`: the trial's metrics and ratios, and the plan it trained
(``plan_json``, ``plan_summary``), its ``kind`` and ``heuristic_score``. All reports but the final
one carry a checkpoint of the full trial state, so a trial that dies is restarted by Tune
(``FailureConfig``) from its last checkpoint. The trial's torch thread count is its CPU reservation.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from ..compression import CompressionPlan
from .config import TrialConfig
from .dense import DenseResult
from .trial import run_trial

STATE_FILE = "trial_state.pt"


def _cpus_of_this_trial() -> int | None:
    from ray import tune

    try:
        resources = tune.get_context().get_trial_resources()
        cpus = resources.required_resources.get("CPU")
    except Exception:  # outside a Tune session
        return None
    return max(1, int(math.floor(cpus))) if cpus else None


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""


def _clean(row: dict) -> dict:
    """Tune metrics must be plain numbers or strings; None becomes NaN."""
    out = {}
    for key, value in row.items():
        if value is None:
            value = float("nan")
        out[key.replace("/", ".")] = value
    return out


def candidate_fields(candidate: dict) -> dict:
    """The record fields of a candidate (see the module docstring): its plan, and its kind,
    score and ratios where given (the trial's own ratios replace these when it reports)."""
    plan = CompressionPlan.from_dict(candidate["plan"])
    given = {k: candidate[k] for k in ("kind", "heuristic_score", "ratio_paper", "ratio_storage", "target_ratio")
             if k in candidate}
    return {"plan_json": plan.to_json(indent=None), "plan_summary": plan.summary()} | given


def trial_trainable(config: dict) -> None:
    """Ray Tune function trainable wrapping :func:`nxmiformer.trials.run_trial`."""
    from ray import tune

    candidate = config["candidate"]
    plan = CompressionPlan.from_dict(candidate["plan"])
    trial_config = TrialConfig.from_dict(config["trial"])
    cpus = _cpus_of_this_trial()
    if cpus and trial_config.threads is None:
        trial_config = trial_config.replace(threads=cpus)
    dense = DenseResult.load(config["dense_path"]) if config.get("dense_path") else None

    resume, resumed_from = None, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            # to CPU first: the trial may resume on another device than the one that saved it
            resume = torch.load(Path(directory) / STATE_FILE, weights_only=False, map_location="cpu")
        resumed_from = resume["step"]
    fields = candidate_fields(candidate) | {"resumed_from_step": resumed_from, "node_id": _node_id()}

    def report(row: dict, state) -> None:
        metrics = fields | _clean(row) | {"threads": torch.get_num_threads()}
        if row["phase"] == "final":
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state(), Path(directory) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    run_trial(plan, trial_config, report=report, resume=resume, dense=dense)

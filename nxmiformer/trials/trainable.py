"""The Ray Tune function trainable that runs one compression trial.

Its ``config`` (the Tune ``param_space`` of one trial) holds:

* ``plan``: a plan dict (``CompressionPlan.to_dict()``)
* ``trial``: a ``TrialConfig.to_dict()``
* ``dense_path`` (optional): a finished warm-start directory shared through the storage path
* ``inject_failure`` (optional, for tests): ``{"marker": PATH, "after_reports": K,
  "candidate_index": I, "start_log": LOG}`` raises once, after the K-th report of the trial whose
  plan has ``meta["candidate_index"] == I`` (and ``meta["kind"] == KIND`` if ``"kind"`` is given; any
  trial if neither is), if ``PATH`` does not exist
  yet (and creates it); every trial start appends its candidate index to ``LOG``. With
  ``{"nonfinite": True, "candidate_index": I}`` that trial instead trains from a copy of the warm
  start whose classifier holds a NaN, so its loss is really non-finite and the trial fails with
  :class:`~nxmiformer.trials.trial.NonFiniteLoss`

Every evaluation is reported with ``tune.report``; all but the final one carry a checkpoint of
the full trial state, so a trial that dies is restarted by Tune (``FailureConfig``) from its
last checkpoint. The trial's torch thread count is its CPU reservation.
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


def trial_trainable(config: dict) -> None:
    """Ray Tune function trainable wrapping :func:`nxmiformer.trials.run_trial`."""
    from ray import tune

    plan = CompressionPlan.from_dict(config["plan"])
    trial_config = TrialConfig.from_dict(config["trial"])
    cpus = _cpus_of_this_trial()
    if cpus and trial_config.threads is None:
        trial_config = trial_config.replace(threads=cpus)
    dense = DenseResult.load(config["dense_path"]) if config.get("dense_path") else None

    resume, resumed_from = None, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = torch.load(Path(directory) / STATE_FILE, weights_only=False)
        resumed_from = resume["step"]

    failure = dict(config.get("inject_failure") or {})
    index = plan.meta.get("candidate_index")
    if failure.get("start_log"):
        with open(failure["start_log"], "a") as log:
            log.write(f"{index} {resumed_from}\n")
    if ("candidate_index" in failure and failure["candidate_index"] != index) or (
            "kind" in failure and failure["kind"] != plan.meta.get("kind")):
        failure = {}
    reports = 0

    def report(row: dict, state) -> None:
        nonlocal reports
        metrics = _clean(row) | {"resumed_from_step": resumed_from, "threads": torch.get_num_threads(),
                                 "node_id": _node_id()}
        if row["phase"] == "final":
            tune.report(metrics)
        else:
            with tempfile.TemporaryDirectory() as directory:
                torch.save(state(), Path(directory) / STATE_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        reports += 1
        marker = failure.get("marker")
        if marker and reports >= failure.get("after_reports", 1) and not Path(marker).exists():
            Path(marker).write_text("failed once\n")
            raise RuntimeError(f"injected failure after report {reports}")

    if failure.get("nonfinite"):
        with tempfile.TemporaryDirectory() as directory:
            run_trial(plan, trial_config, report=report, resume=resume, dense=_poisoned_copy(dense, directory))
        return
    run_trial(plan, trial_config, report=report, resume=resume, dense=dense)


def _poisoned_copy(dense: DenseResult, directory: str) -> DenseResult:
    """The warm start with one NaN in its classifier weight (fault injection for tests)."""
    import shutil

    from ..models import load_model

    target = Path(directory) / "poisoned"
    shutil.copytree(dense.path, target)
    model = load_model(str(target))
    with torch.no_grad():
        model.classifier.weight.view(-1)[0] = float("nan")
    model.save_pretrained(target)
    return DenseResult.load(target)

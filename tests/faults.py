"""Fault injection for the search and trainable tests, outside the package.

:func:`inject` returns a wrapper for ``run_search(..., wrap_trainable=...)`` (or for a Tune
trainable directly). The wrapped trainable can log every trial start, raise once after a trial's
K-th report, or train one trial from a warm start whose classifier holds a NaN.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import ray.cloudpickle
import torch

from nxmiformer.compression import CompressionPlan
from nxmiformer.trials.trainable import STATE_FILE

# Ray's workers cannot import tests/; ship this module's code with the pickled trainable
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def candidate_index(config: dict, out: str | Path | None) -> int | None:
    """The row of ``out/candidates.parquet`` that a stage-1 trial trains; None for a refined
    trial (or without ``out``)."""
    import pandas as pd

    given = config.get("candidate")
    if out is None or not given or given.get("kind") == "refined":
        return None
    plan = CompressionPlan.from_dict(given["plan"])
    frame = pd.read_parquet(Path(out) / "candidates.parquet")
    for i, plan_json in enumerate(frame["plan_json"]):
        if CompressionPlan.from_json(plan_json) == plan:
            return i
    return None


def _resumed_from() -> int:
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        return int(torch.load(Path(directory) / STATE_FILE, weights_only=False)["step"])


def _poisoned_copy(dense_path: str, directory: str) -> str:
    """The warm start with one NaN in its classifier weight."""
    from nxmiformer.models import load_model

    target = Path(directory) / "poisoned"
    shutil.copytree(dense_path, target)
    model = load_model(str(target))
    with torch.no_grad():
        model.classifier.weight.view(-1)[0] = float("nan")
    model.save_pretrained(target)
    return str(target)


def inject(out=None, *, marker=None, after_reports: int = 1, candidate: int | None = None, kind: str | None = None,
           start_log=None, nonfinite: bool = False):
    """A trainable wrapper. Every trial start appends ``"<candidate index> <resumed from step>"``
    to ``start_log``. The targeted trial (``candidate`` index in ``out/candidates.parquet``, or
    ``kind``; any trial if neither) raises once after its ``after_reports``-th report, if
    ``marker`` does not exist yet (and creates it); with ``nonfinite`` it trains from a poisoned
    copy of the warm start instead, so its loss is really non-finite."""

    def wrap(trainable):
        def faulty(config: dict) -> None:
            import ray.tune

            index = candidate_index(config, out)
            if start_log:
                with open(start_log, "a") as log:
                    log.write(f"{index} {_resumed_from()}\n")
            given_kind = (config.get("candidate") or {}).get("kind", "refined")
            targeted = (candidate is None or candidate == index) and (kind is None or kind == given_kind)
            if targeted and nonfinite:
                with tempfile.TemporaryDirectory() as directory:
                    return trainable(config | {"dense_path": _poisoned_copy(config["dense_path"], directory)})
            if not (targeted and marker):
                return trainable(config)
            report, reports = ray.tune.report, []

            def failing_report(*args, **kwargs):
                report(*args, **kwargs)
                reports.append(1)
                if len(reports) >= after_reports and not Path(marker).exists():
                    Path(marker).write_text("failed once\n")
                    raise RuntimeError(f"injected failure after report {len(reports)}")

            ray.tune.report = failing_report
            try:
                return trainable(config)
            finally:
                ray.tune.report = report

        return faulty

    return wrap

"""The Ray Tune plumbing of a search: one Tune experiment per stage (resources, ASHA, failure
handling, our one-line-per-trial progress) and the :class:`~nxmiformer.records.TrialRecord` table
read back from its ``ResultGrid``."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ..compression import CONVENTIONS, CompressionPlan, RatioTarget
from ..errors import NxmiError
from ..outputs import logger_level
from ..records import TrialRecord, records_frame
from ..trials.config import TrialConfig
from .cluster import cluster_cpus, node_cpus
from .config import SearchConfig
from .report import say

# a trainable -> the trainable Tune runs (e.g. one that injects faults, in tests)
Wrapper = Callable[[Callable[[dict], None]], Callable[[dict], None]]


def _progress_callback(total: int, progress: bool, objective: str):
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            # a trial that ends before its final report was stopped by ASHA at its rung
            how = "completed" if r.get("phase") == "final" else f"stopped at step {r.get('step', '?')}"
            say(progress, f"  [{self.done}/{total}] {trial.trial_id} {r.get('kind', ''):<8} {how:<18} "
                          f"{objective} {r.get(objective, float('nan')):.4f}  validation retention "
                          f"{r.get('retention', float('nan')):.2%}  ratio {r.get('ratio_paper', float('nan')):.4f} paper")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            say(progress, f"  [{self.done}/{total}] {trial.trial_id} failed")

    return Progress()


def make_tuner(config: SearchConfig, trainable, param_space: dict, storage: Path, name: str, n_trials: int,
                progress: bool, restore: bool, search_alg=None, asha: bool = True):
    """The Tune experiment ``name`` of one stage under ``storage`` (restored from there when
    ``restore``): ``n_trials`` of ``trainable`` over ``param_space`` (or sampled by ``search_alg``),
    stopped early by :class:`TargetASHA` when the search and ``asha`` allow it."""
    from ray import tune

    from .asha import TargetASHA

    # one checkpoint per evaluation is by design; Tune's warning about it is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(trainable, trial_resources(config, n_trials))
    if restore:
        return tune.Tuner.restore(str(storage / name), trainable=trainable, resume_errored=True)
    scheduler = None
    if config.asha and config.steps >= 4 and asha:
        # one rung, after some recovery from the projection (SearchConfig.rung)
        rung = TrialConfig.from_dict(param_space["trial"]).eval_at[0]
        scheduler = TargetASHA(time_attr="step", metric=config.objective, mode=config.mode, max_t=config.steps,
                               grace_period=rung, reduction_factor=2)
    concurrency = config.concurrency or max(1, cluster_cpus() // config.cpus_per_trial)
    fail_fast = "raise" if config.fail_fast else False
    return tune.Tuner(
        trainable,
        param_space=param_space,
        # reusing the trial processes saves a torch/transformers import per trial
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, scheduler=scheduler, reuse_actors=True,
                                    search_alg=search_alg, num_samples=n_trials if search_alg else 1),
        run_config=tune.RunConfig(
            name=name, storage_path=str(storage), verbose=0,
            callbacks=[_progress_callback(n_trials, progress, config.objective)],
            failure_config=tune.FailureConfig(max_failures=0 if fail_fast else 1, fail_fast=fail_fast),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def trial_resources(config: SearchConfig, n_trials: int | None = None) -> dict:
    """What Ray reserves for each trial: ``cpus_per_trial`` CPUs and, when asked, GPUs. A CPU
    stage of ``n_trials`` that would leave CPUs idle (fewer trials than the cluster has room for,
    e.g. a one-trial Optuna stage on 2 cores) shares them out: each of its trials gets
    ``cluster CPUs // n_trials`` (at most a node's), and as many torch threads. Not with an
    explicit ``concurrency``, nor with GPUs."""
    cpus = config.cpus_per_trial
    if n_trials and not config.gpus_per_trial and config.concurrency is None:
        cpus = max(cpus, min(node_cpus(), cluster_cpus() // n_trials))
    return {"cpu": cpus} | ({"gpu": config.gpus_per_trial} if config.gpus_per_trial else {})


def check_cluster_gpus(config: SearchConfig) -> None:
    """A trial that asks for more GPUs than any node has would wait forever: refuse it."""
    import ray

    if not config.gpus_per_trial:
        return
    most = max((node.get("Resources", {}).get("GPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if most < min(config.gpus_per_trial, 1):
        raise NxmiError(f"gpus_per_trial {config.gpus_per_trial} but no node of the Ray cluster has a GPU "
                        f"(most on one node: {most:g}); drop --gpus-per-trial or join a cluster with GPUs (--address)")
    if config.gpus_per_trial > most:
        raise NxmiError(f"gpus_per_trial {config.gpus_per_trial:g} but the largest node has {most:g} GPUs")


@contextmanager
def tune_console(verbose: bool) -> Iterator[None]:
    """Ray Tune's own console (its configuration boxes, result paths, TensorBoard hints and INFO
    logs) only when ``verbose``: otherwise our one line per trial is all a stage prints. Tune's
    new output engine prints those boxes even at ``verbose=0``; its legacy reporter honours it."""
    if verbose:
        yield
        return
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        with logger_level("ray.tune", logging.WARNING):
            yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def fit_tuner(tuner, config: SearchConfig, verbose: bool = False):
    """``tuner.fit()``, quietly unless ``verbose``; an interruption becomes a one-line error that
    says how to resume."""
    try:
        with tune_console(verbose):
            return tuner.fit()
    except Exception as exc:  # fail-fast or a driver-side failure: the experiment state is on disk
        raise NxmiError(f"search interrupted ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        f"run it again with --resume --out {config.out} to continue") from exc


def results_table(grid, targets: "tuple[RatioTarget, ...]", dense_primary: float, modules: pd.DataFrame,
                  candidate_of: Callable[[dict], dict | None]) -> pd.DataFrame:
    """One :class:`TrialRecord` per trial of a Tune ``ResultGrid``, from the trial's last report.
    A trial that failed before its first report keeps the candidate its Tune config gave it
    (``candidate_of(config)``), with the ratios of that plan on ``modules``. ``meets_target`` is
    checked against the trial's own target of ``targets`` (the lowest for a trial without one)."""
    from ..trials.trainable import candidate_fields
    from .knapsack import plan_ratio

    records = []
    for result in grid:
        report = result.metrics or {}
        status = "error" if result.error else ("completed" if report.get("phase") == "final" else "stopped")
        fallback = {"dense_primary": dense_primary}
        given = candidate_of(result.config or {}) if "plan_json" not in report else None
        if given:
            plan = CompressionPlan.from_dict(given["plan"])
            fallback |= {f"ratio_{c}": plan_ratio(plan, modules, c) for c in CONVENTIONS} | candidate_fields(given)
        record = TrialRecord.from_report(
            report, trial_id=report.get("trial_id") or Path(result.path).name, status=status,
            error=(str(result.error).strip().splitlines() or [""])[-1] if result.error else "", fallback=fallback)
        target = next((t for t in targets if t.value == record.target_ratio), targets[0])
        records.append(dataclasses.replace(record, meets_target=bool(target.is_met(getattr(record, target.column)))))
    return records_frame(records)

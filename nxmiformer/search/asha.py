"""ASHA per target, for a search of several targets (imported when a stage's Tune experiment is made:
Ray Tune is imported inside a search only)."""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class TargetASHA(FIFOScheduler):
    """ASHA that compares a trial only with the trials of its own target: one
    :class:`~ray.tune.schedulers.ASHAScheduler` (same keyword arguments) per value of the trial's
    ``candidate["target_ratio"]`` in its Tune config. The objective of a plan at 96.875% is not in the
    same race as one at 87.5%: one ASHA over both would stop the high-ratio plans for being high-ratio.
    Trials are started first in, first out, as by ASHA itself."""

    def __init__(self, **asha):
        super().__init__()
        self._asha_args = asha
        self._by_target: dict = {}
        self._target_of: dict = {}

    def _for(self, trial) -> ASHAScheduler:
        if trial.trial_id not in self._target_of:
            self._target_of[trial.trial_id] = ((trial.config or {}).get("candidate") or {}).get("target_ratio")
        target = self._target_of[trial.trial_id]
        if target not in self._by_target:
            self._by_target[target] = ASHAScheduler(**self._asha_args)
        return self._by_target[target]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the metric and mode are the search's, given at construction

    def on_trial_add(self, tune_controller, trial):
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller, trial):
        self._for(trial).on_trial_error(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        self._for(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"target {target}: {asha.debug_string()}" for target, asha in self._by_target.items())

"""An optional second stage of a search (``--refine-trials N``, off by default): Optuna refines
per-group choices, seeded with the knapsack stage's plans.

The search space has one categorical parameter per *group* of modules: a component type
(query, key, ... ffn_out; qkv where a model fuses them; other) over a contiguous block of layers
(``layer_groups`` blocks; as many blocks as layers makes every module its own group). Each
parameter's choices are the menu options that every module of the group can take.

Ray Tune's :class:`~ray.tune.search.optuna.OptunaSearch` drives Optuna's TPE sampler over that
space. It is seeded two ways:

* the stage-1 trials whose plans are exactly expressible per group (the uniform and grid
  baselines always are) are *told* to Optuna with their measured objective, so they are not
  trained again;
* the best stage-1 plans that are not (the heterogeneous ones) are projected onto the groups
  (each group takes its modules' most common option) and *enqueued* as the first trials.

A sampled plan may break the ratio constraint. It is **repaired**, not rejected: while the plan
is over budget, the single-module move to a cheaper option with the least sensitivity increase per
bit saved is applied (the additive model of the knapsack). The repair is deterministic; the trial
reports the repaired plan it trained. (Filling unused budget the other way was tried and removed:
it pulled the samples back onto stage-1 plans; docs/decisions.md.)

The space travels to the trials as a JSON file under the search's storage path
(:meth:`GroupSpace.save`), not inside every trial's Tune config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..compression import ALL_COMPONENTS, CompressionPlan, RatioTarget
from ..errors import NxmiError
from ..outputs import write_json
from .knapsack import CandidateProblem

REFINED = "refined"


@dataclass(frozen=True)
class GroupSpace:
    """The refinement search space over ``problem`` (see the module docstring)."""

    modules: tuple[str, ...]
    labels: tuple[str, ...]
    costs: np.ndarray  # [module, option] bits under the target's convention
    scores: np.ndarray  # [module, option] sensitivity, inf where not allowed
    dense_bits: float
    groups: dict  # parameter name -> tuple of module row indices
    target: RatioTarget

    @classmethod
    def build(cls, problem: CandidateProblem, target: "RatioTarget | float", convention: str = "paper",
              layer_groups: int = 2) -> "GroupSpace":
        target = RatioTarget.of(target, convention)
        if isinstance(layer_groups, bool) or not isinstance(layer_groups, int) or layer_groups < 1:
            raise NxmiError(f"layer groups must be a positive integer, got {layer_groups!r}")
        frame = problem.modules.reset_index(drop=True)
        layers = sorted(frame["layer"].unique())
        blocks = [b for b in np.array_split(np.asarray(layers), min(layer_groups, len(layers))) if len(b)]
        # every component type the modules have (qkv, other...), so every module is in a group
        present = set(frame["component"])
        order = [c for c in ALL_COMPONENTS if c in present] + sorted(present - set(ALL_COMPONENTS))
        groups = {}
        for block in blocks:
            span = f"L{block[0]}" if len(block) == 1 else f"L{block[0]}-{block[-1]}"
            in_block = frame["layer"].isin(block)
            for component in order:
                rows = tuple(int(i) for i in frame.index[in_block & (frame["component"] == component)])
                if rows:
                    groups[f"{component}.{span}"] = rows
        return cls(modules=tuple(frame["module"]), labels=tuple(problem.labels), costs=problem.costs[target.convention],
                   scores=problem.scores, dense_bits=problem.dense_bits, groups=groups, target=target)

    # -- the Optuna space ----------------------------------------------------------------------
    def choices(self, group: str) -> list[str]:
        rows = list(self.groups[group])
        ok = np.isfinite(self.costs[rows]).all(axis=0) & np.isfinite(self.scores[rows]).all(axis=0)
        return [label for label, allowed in zip(self.labels, ok) if allowed]

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution

        return {group: CategoricalDistribution(self.choices(group)) for group in self.groups}

    # -- plans <-> parameters --------------------------------------------------------------------
    def choice_of(self, plan: CompressionPlan) -> np.ndarray | None:
        """Menu index per module for ``plan`` (unnamed modules are dense); None when the plan uses
        an option outside the menu."""
        index = {label: k for k, label in enumerate(self.labels)}
        out = np.empty(len(self.modules), dtype=int)
        for i, name in enumerate(self.modules):
            k = index.get(str(plan.spec_for(name)))
            if k is None:
                return None
            out[i] = k
        return out

    def params_of(self, plan: CompressionPlan, exact: bool = True) -> dict | None:
        """The group parameters of ``plan``: None if ``exact`` and some group mixes options;
        otherwise each group's most common option (ties to the cheaper one)."""
        choice = self.choice_of(plan)
        if choice is None:
            return None
        params = {}
        for group, rows in self.groups.items():
            picked = choice[list(rows)]
            values, counts = np.unique(picked, return_counts=True)
            if exact and len(values) > 1:
                return None
            best = values[counts == counts.max()]
            k = int(min(best, key=lambda k: self.costs[list(rows), k].sum()))
            if self.labels[k] not in self.choices(group):
                return None
            params[group] = self.labels[k]
        return params

    def plan_for(self, params: Mapping[str, str], meta: dict | None = None) -> CompressionPlan:
        """The plan of sampled group ``params``, repaired to meet the constraint."""
        missing = sorted(set(self.groups) - set(params))
        if missing:
            raise NxmiError(f"refinement parameters lack group(s) {missing}")
        index = {label: k for k, label in enumerate(self.labels)}
        choice = np.empty(len(self.modules), dtype=int)
        for group, rows in self.groups.items():
            label = params[group]
            if label not in index:
                raise NxmiError(f"option {label!r} of group {group} is not in the menu ({', '.join(self.labels)})")
            choice[list(rows)] = index[label]
        choice, moves = self.repair(choice)
        specs = {name: self.labels[k] for name, k in zip(self.modules, choice) if self.labels[k] != "dense"}
        meta = dict(meta or {}) | {"kind": REFINED, "sampled": dict(params), "repair_moves": moves,
                                   "ratio": self.ratio(choice)}
        return CompressionPlan(specs, meta=meta)

    def candidate(self, trial: Mapping) -> dict | None:
        """What a refinement trial with Tune config ``trial`` trains: its repaired plan and kind
        (None when the config lacks a group)."""
        if not all(group in trial for group in self.groups):
            return None
        return {"plan": self.plan_for({group: trial[group] for group in self.groups}).to_dict(), "kind": REFINED}

    # -- the constraint ----------------------------------------------------------------------------
    def ratio(self, choice: np.ndarray) -> float:
        return float(1.0 - self.costs[np.arange(len(choice)), choice].sum() / self.dense_bits)

    def _budget(self) -> float:
        return self.target.budget_bits(self.dense_bits)

    def repair(self, choice: np.ndarray) -> tuple[np.ndarray, int]:
        """Greedy repair to the budget: the cheapest move per bit saved first (ties: the larger
        saving, then the lower module and option index). Returns the choice and the moves made."""
        choice = np.array(choice, dtype=int)
        rows = np.arange(len(choice))
        budget = self._budget()
        allowed = np.isfinite(self.costs) & np.isfinite(self.scores)
        moves = 0
        while self.costs[rows, choice].sum() > budget:
            saving = self.costs[rows, choice][:, None] - self.costs
            damage = np.maximum(self.scores - self.scores[rows, choice][:, None], 0.0)
            ok = allowed & (saving > 0)
            if not ok.any():
                raise NxmiError(f"cannot repair the plan to the target ratio {self.target}: no cheaper option is left")
            i, k = np.nonzero(ok)
            rate = damage[i, k] / saving[i, k]
            best = np.lexsort((k, i, -saving[i, k], rate))[0]
            choice[i[best]] = k[best]
            moves += 1
        return choice, moves

    # -- transport to the trials -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"modules": list(self.modules), "labels": list(self.labels), "costs": self.costs.tolist(),
                "scores": self.scores.tolist(), "dense_bits": self.dense_bits,
                "groups": {g: list(r) for g, r in self.groups.items()}, "target_ratio": self.target.value,
                "convention": self.target.convention}

    @classmethod
    def from_dict(cls, data: Mapping) -> "GroupSpace":
        return cls(modules=tuple(data["modules"]), labels=tuple(data["labels"]),
                   costs=np.asarray(data["costs"], dtype=float), scores=np.asarray(data["scores"], dtype=float),
                   dense_bits=float(data["dense_bits"]), groups={g: tuple(r) for g, r in data["groups"].items()},
                   target=RatioTarget(float(data["target_ratio"]), data["convention"]))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the space as JSON (atomically: a trial never reads half a file); returns the path."""
        return write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GroupSpace":
        return cls.from_dict(json.loads(Path(path).read_text()))


def seed_points(space: GroupSpace, stage1: pd.DataFrame, enqueue: int = 2,
                objective: str = "primary", mode: str = "max") -> tuple[list[tuple[dict, float, bool]], list[dict]]:
    """Seeds for Optuna from the stage-1 results table.

    Returns ``(told, enqueued)``: ``told`` holds ``(params, objective, pruned)`` for every finished
    stage-1 trial whose plan is exactly expressible per group (ASHA-stopped trials are told as
    pruned); ``enqueued`` holds the group projections of the ``enqueue`` best completed plans that
    are not, best first, without duplicates of each other or of a told point."""
    told, enqueued, seen = [], [], set()
    ranked = stage1[stage1["status"].isin(["completed", "stopped"]) & np.isfinite(stage1[objective])]
    ranked = ranked.sort_values(["status", objective], ascending=[True, mode == "min"])  # completed, best first
    rows = [(row, CompressionPlan.from_dict(json.loads(row["plan_json"]))) for _, row in ranked.iterrows()]
    rows = [(row, plan, space.params_of(plan, exact=True)) for row, plan in rows]
    for row, _, exact in rows:
        if exact is not None and _key(exact) not in seen:
            seen.add(_key(exact))
            told.append((exact, float(row[objective]), row["status"] == "stopped"))
    for row, plan, exact in rows:
        if len(enqueued) >= enqueue:
            break
        if exact is None and row["status"] == "completed":
            projected = space.params_of(plan, exact=False)
            if projected is not None and _key(projected) not in seen:
                seen.add(_key(projected))
                enqueued.append(projected)
    return told, enqueued


def _key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def make_searcher(space: GroupSpace, told, enqueued, seed: int = 0, startup_trials: int = 4,
                  objective: str = "primary", mode: str = "max", front: bool = False):
    """Ray Tune's OptunaSearch over ``space`` with TPE, the ``told`` points added as finished
    trials and the ``enqueued`` points run first.

    ``front``: two objectives, ``objective`` and the plan's ratio under the space's convention
    (maximised), with Optuna's multi-objective TPE, for a search of several targets: it proposes
    plans between and beyond the targets (every plan is repaired to the space's target, the lowest).
    The seeds enter an Optuna study of our own (in memory) that OptunaSearch then loads: its own
    ``add_evaluated_point`` takes one objective value."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    if front:
        return _front_searcher(space, told, enqueued, sampler, objective, mode)
    searcher = OptunaSearch(space=space.distributions(), metric=objective, mode=mode, sampler=sampler,
                            points_to_evaluate=enqueued or None)
    for params, value, pruned in told:
        searcher.add_evaluated_point(params, value, pruned=pruned, intermediate_values=[value] if pruned else None)
    return searcher


def _front_searcher(space: GroupSpace, told, enqueued, sampler, objective: str, mode: str):
    import optuna
    from optuna.trial import TrialState, create_trial
    from ray.tune.search.optuna import OptunaSearch

    storage, name = optuna.storages.InMemoryStorage(), "front"
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                directions=["maximize" if mode == "max" else "minimize", "maximize"])
    distributions = space.distributions()
    for params, value, pruned in told:
        if pruned:
            study.add_trial(create_trial(state=TrialState.PRUNED, params=params, distributions=distributions))
        else:
            ratio = space.plan_for(params).meta["ratio"]
            study.add_trial(create_trial(values=[value, ratio], params=params, distributions=distributions))
    for params in enqueued:
        study.enqueue_trial(params)
    return OptunaSearch(space=distributions, metric=[objective, space.target.column], mode=[mode, "max"],
                        sampler=sampler, storage=storage, study_name=name)


def refine_trainable(config: dict) -> None:
    """The Tune trainable of a refinement trial: group parameters -> repaired plan -> the
    ordinary trial trainable (which reports the plan). ``config["space"]`` is the path of the
    saved :class:`GroupSpace`; ``config["known"]`` (optional) the path of the records of plans
    already trained: a sample that repairs to one of them is not trained again, its record is
    reported once more with ``duplicate_of`` naming the trial."""
    from ..trials.trainable import trial_trainable

    space = GroupSpace.load(config["space"])
    candidate = space.candidate(config)
    if config.get("known"):
        reused = _trained_before(CompressionPlan.from_dict(candidate["plan"]), config["known"])
        if reused is not None:
            from ray import tune

            tune.report(reused)
            return
    rest = {k: v for k, v in config.items() if k not in space.groups and k not in ("space", "known")}
    trial_trainable(rest | {"candidate": candidate})


def _trained_before(plan: CompressionPlan, known: str) -> dict | None:
    """The final report of an earlier trial of ``plan`` (in the records at ``known``), as this
    refined trial's; None when no completed trial trained it."""
    from ..records import TASK_METRICS, read_records

    records = read_records(known)
    for _, row in records[records["status"] == "completed"].iterrows():
        if CompressionPlan.from_json(row["plan_json"]) == plan:
            metrics = {k: v for k, v in json.loads(row["metrics_json"]).items() if k in TASK_METRICS}
            fields = ("plan_json", "plan_summary", "ratio_paper", "ratio_storage", "primary", "retention",
                      "selection_primary", "selection_loss", "selection_loss_calibrated", "selection_kl",
                      "admm_distance", "admm_mask_agreement", "predictions", "selection_predictions")
            return metrics | {k: row[k] for k in fields} | {
                "kind": REFINED, "phase": "final", "step": int(row["steps"]), "duplicate_of": row["trial_id"]}
    return None

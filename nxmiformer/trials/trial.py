"""One compression trial: ADMM + STE-QAT phase, hard projection, masked QAT phase.

:class:`Trial` holds a trial in progress and runs its phases; :func:`run_trial` drives one from the
dense warm start (or a checkpointed state) to the measured, hardened model. The Ray Tune trainable
(``trials/trainable.py``), the search and ``nxmi train`` all call :func:`run_trial`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compression import (
    ADMM, CompressionPlan, compress_, compressed_modules, compression_ratio, harden_,
)
from ..compression.layer import refit_clips_, scale_parameters
from ..models import load_model, load_tokenizer
from .config import TrialConfig
from .data import prepare_task_data
from .dense import DenseResult, finetune_dense, selection_reference
from .loop import BatchStream, evaluate, model_device, resolve_device, selection_metrics, set_seed, train_step

Report = Callable[[dict, Callable[[], dict]], None]

# the keys of a measured row that are not metrics of the model (besides the admm_* diagnostics)
ROW_KEYS = ("step", "phase", "retention", "loss", "ratio_paper", "ratio_storage")


@dataclass
class TrialResult:
    """What a trial measured. ``metrics`` are always those of the hardened model."""

    plan: CompressionPlan
    metrics: dict[str, float]
    primary: float
    dense_primary: float
    retention: float
    ratio_paper: float
    ratio_storage: float
    steps: int
    admm_residual: float | None
    wall_time: float
    history: list[dict] = field(default_factory=list)
    model: Any = None
    admm_at_projection: dict[str, float] = field(default_factory=dict)

    def summary(self, config: TrialConfig, dense: dict[str, float]) -> dict:
        """The trial's record (``nxmi train`` writes it as ``metrics.json``), given the ``config``
        it ran with and the metrics of its ``dense`` warm start."""
        return {
            "task": config.data.task, "plan": self.plan.summary(), "steps": self.steps,
            "dense": dense, "compressed": self.metrics, "retention": self.retention,
            "ratio_paper": self.ratio_paper, "ratio_storage": self.ratio_storage,
            "admm_residual": self.admm_residual, "admm_at_projection": self.admm_at_projection,
            "wall_time": self.wall_time, "trial_config": config.to_dict(), "history": self.history,
        }


def retention(primary: float, dense_primary: float) -> float:
    return primary / dense_primary if dense_primary else float("nan")


class Trial:
    """A trial in progress: the compressed model, its optimizer, schedule and ADMM, the step and
    the rows measured so far.

    Set up from the dense warm start, or from a :meth:`state` to resume. :meth:`run` trains the
    steps that remain through :meth:`admm_phase`, :meth:`project` and :meth:`qat_phase`, then
    measures the hardened model; every :meth:`measure` goes to ``report`` with :meth:`state`.
    """

    def __init__(self, plan: CompressionPlan | str, config: TrialConfig, dense: DenseResult,
                 report: Report | None = None, resume: dict | None = None):
        self.config, self.dense, self.report = config, dense, report
        self.info = config.data.task_info
        seed = config.data.seed if config.seed is None else config.seed
        set_seed(seed)
        self.tokenizer = load_tokenizer(str(dense.path))
        self.model = load_model(str(dense.path)).to(resolve_device(config.device))
        self.plan = CompressionPlan.uniform(self.model, plan) if isinstance(plan, str) else plan
        self.plan.validate(self.model)
        self.ratios = {c: compression_ratio(self.model, self.plan, c) for c in ("paper", "storage")}
        self.teacher = None
        if config.kd_alpha > 0 and config.steps > 0:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.data = prepare_task_data(
            self.info, self.tokenizer, data_dir=config.data.data_dir, max_length=config.data.max_length,
            train_size=config.data.train_size, eval_size=config.data.eval_size, seed=config.data.seed,
            include_train=config.steps > 0, holdout_size=config.data.holdout_size,
            selection_size=config.data.selection_size)
        self.reference = selection_reference(dense, config.data, self.data, self.tokenizer, self.model)
        compress_(self.model, self.plan)
        self.admm = _make_admm(self.model, self.plan, config) if config.admm_steps > 0 else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 1.0 - s / max(1, config.steps)))
        self.step, self.history, self.hardened = 0, [], False
        self.last_loss = float("nan")
        self.admm_at_projection: dict[str, float] = {}
        if resume is not None:
            self._restore(resume)
        elif self.admm is None:
            self.project()  # one-shot projection of the dense weights; masks frozen from the start
        self.batches = (BatchStream(self.data.train, self.tokenizer, config.batch_size, seed).from_step(self.step)
                        if config.steps > 0 else iter(()))

    def state(self) -> dict:
        """Everything needed to continue this trial from where it stands (``resume``)."""
        modules = compressed_modules(self.model)
        return {
            "step": self.step, "history": copy.deepcopy(self.history), "hardened": self.hardened,
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "masks": {n: m.mask.clone() for n, m in modules.items() if m.mask is not None},
            "clips": {n: m.clip.clone() for n, m in modules.items() if m.clip is not None},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "schedule": copy.deepcopy(self.schedule.state_dict()),
            "admm": self.admm.state_dict() if self.admm is not None else None, "rng": torch.get_rng_state(),
            "admm_at_projection": dict(self.admm_at_projection), "loss": self.last_loss,
        }

    def _restore(self, state: dict) -> None:
        self.step, self.history, self.hardened = state["step"], list(state["history"]), state["hardened"]
        self.admm_at_projection = dict(state.get("admm_at_projection") or {})
        self.last_loss = state.get("loss", float("nan"))
        if self.hardened:
            harden_(self.model, state["masks"], project_weights=False)
            self._train_scales()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.admm is not None and state.get("admm"):
            self.admm.load_state_dict(state["admm"])
        modules = compressed_modules(self.model)
        for name, clip in (state.get("clips") or {}).items():  # the soft phase's fitted clip ratios
            modules[name].clip = clip.to(model_device(self.model))
        torch.set_rng_state(state["rng"])

    def run(self, progress: bool = False) -> dict:
        """Train the steps that remain, phase by phase, and measure the hardened model; returns
        the final row."""
        steps = self.config.steps
        bar = tqdm(total=steps, initial=self.step, desc=f"trial {self.plan.summary()}"[:60], disable=not progress,
                   leave=False)
        self.model.train()
        if not self.hardened:
            self.admm_phase(bar)
            self.project()
            if self.step < steps:
                self.measure("projected")
        self.qat_phase(bar)
        bar.close()
        return self.measure("final")

    def admm_phase(self, bar: tqdm) -> None:
        """ADMM + STE-QAT up to the projection: the task loss plus ADMM's penalty, a proximal pull
        every step and Z/U-steps on ADMM's schedule."""
        while self.step < min(self.config.admm_steps, self.config.steps):
            self._train_step(bar, penalty=self.admm.penalty)
            if self.admm.step(self.step):
                refit_clips_(self.model)  # the soft phase's clip ratios follow the weights
            self._measure_on_schedule("admm")

    def project(self) -> None:
        """The hard projection: masks frozen, weights exactly N:M and on the grid. ADMM's
        diagnostics just before it are kept: once hardened, W is in the constraint set, and
        what tells how well ADMM converged is the state before."""
        if self.admm is not None:
            self.admm_at_projection = self.admm.diagnostics()
        harden_(self.model)
        self.hardened = True
        self._train_scales()

    def qat_phase(self, bar: tqdm) -> None:
        """Masked QAT of the hardened model on the task loss, up to the last step."""
        while self.step < self.config.steps:
            self._train_step(bar)
            self._measure_on_schedule("qat")

    def measure(self, phase: str) -> dict:
        """Evaluate the model; append the row to the history and hand it to ``report``. The final
        row also reports the ``predictions`` on the validation rows and the
        ``selection_predictions`` on the selection rows (not kept in the history)."""
        final = phase == "final"
        metrics = evaluate(self.model, self.data, self.tokenizer, keep_predictions=final)
        selection = selection_metrics(self.model, self.data, self.tokenizer, self.reference, keep_predictions=final)
        kept = {k: v.pop(k) for k, v in (("predictions", metrics), ("selection_predictions", selection)) if k in v}
        row = {
            "step": self.step, "phase": phase, **metrics, **selection,
            "retention": retention(metrics["primary"], self.dense.primary), "loss": self.last_loss,
            "ratio_paper": self.ratios["paper"], "ratio_storage": self.ratios["storage"],
            **self._admm_diagnostics(),
        }
        self.history.append(row)
        if self.report is not None:
            self.report(row | kept, self.state)
        return row

    def result(self, final: dict, wall_time: float, keep_model: bool = False) -> TrialResult:
        """The :class:`TrialResult` of the ``final`` row."""
        return TrialResult(
            plan=self.plan, metrics={k: v for k, v in final.items() if k not in ROW_KEYS and not k.startswith("admm_")},
            primary=final["primary"], dense_primary=self.dense.primary, retention=final["retention"],
            ratio_paper=self.ratios["paper"], ratio_storage=self.ratios["storage"], steps=self.step,
            admm_residual=final["admm_residual"], wall_time=wall_time, history=self.history,
            model=self.model if keep_model else None, admm_at_projection=dict(self.admm_at_projection),
        )

    def _train_scales(self) -> None:
        # trained (lsq) scales exist from the hard projection on: train them too, without decay
        scales = scale_parameters(self.model)
        if scales:
            lr = self.config.lr
            self.optimizer.add_param_group({"params": scales, "weight_decay": 0.0, "lr": lr, "initial_lr": lr})
            self.schedule.base_lrs.append(lr)
            self.schedule.lr_lambdas.append(self.schedule.lr_lambdas[0])

    def _train_step(self, bar: tqdm, penalty: Callable[[], torch.Tensor] | None = None) -> None:
        config = self.config
        self.last_loss = train_step(self.model, next(self.batches), self.optimizer, self.schedule,
                                    self.info.is_regression, self.teacher, config.kd_alpha, config.kd_temperature,
                                    penalty, config.precision)
        self.step += 1
        bar.update()
        bar.set_postfix(loss=f"{self.last_loss:.3f}", phase="qat" if self.hardened else "admm")

    def _measure_on_schedule(self, phase: str) -> None:
        every, step = self.config.eval_every, self.step
        if ((every and step % every == 0) or step in self.config.eval_at) and step < self.config.steps:
            self.measure(phase)

    def _admm_diagnostics(self) -> dict:
        if self.admm is None:
            return {"admm_residual": None}
        diag = self.admm_at_projection if self.hardened else self.admm.diagnostics()
        return {"admm_residual": diag.get("admm_primal"), **diag}


def run_trial(
    plan: CompressionPlan | str,
    config: TrialConfig,
    report: Report | None = None,
    resume: dict | None = None,
    dense: DenseResult | None = None,
    progress: bool = False,
    keep_model: bool = False,
) -> TrialResult:
    """Compress the dense warm start of ``config`` with ``plan`` by ADMM + QAT; measure it.

    Args:
        plan: a :class:`CompressionPlan` or a spec string (uniform plan).
        config: the trial's configuration (data, warm start, schedule).
        report: called after every evaluation with a metrics dict (``step``, ``phase``, the task's
            metrics, ``primary``, ``retention``, ``loss``, ``ratio_paper``, ``ratio_storage``,
            ``admm_residual`` and, when ADMM runs, ``admm_primal``, ``admm_dual``, ``admm_distance``,
            ``admm_mask_agreement`` and ``admm_rho`` (see :meth:`ADMM.diagnostics`; after the hard
            projection, their values just before it)) and a zero-argument function returning the
            full trial state (:meth:`Trial.state`), which a caller may save as a checkpoint and pass
            back as ``resume``.
        resume: a state from ``report``'s second argument: continue from there.
        dense: the warm start; computed (or read from its cache) when not given.
        progress: show a progress bar.
        keep_model: keep the hardened model in the result.
    """
    start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    if dense is None:
        dense = finetune_dense(config.data, config.dense, config.cache_dir, progress=progress)
    trial = Trial(plan, config, dense, report, resume)
    final = trial.run(progress)
    return trial.result(final, time.perf_counter() - start, keep_model)


def _make_admm(model, plan: CompressionPlan, config: TrialConfig) -> ADMM:
    """ADMM for the trial's ADMM phase, with the mode's defaults (``TrialConfig.admm_settings``);
    in decoupled mode the phase schedule of :meth:`ADMM.for_phase` fills what is not given."""
    s = config.admm_settings()
    if config.admm_mode == "decoupled":
        return ADMM.for_phase(model, plan, config.admm_steps, updates=config.admm_updates, rho=s["rho"],
                              rho_max=s["rho_max"], interval=s["interval"], rho_growth=s["rho_growth"])
    return ADMM(model, plan, rho=s["rho"], rho_growth=s["rho_growth"], rho_max=s["rho_max"], interval=s["interval"],
                last_step=config.admm_steps, mode=config.admm_mode)

"""One compression trial: ADMM + STE-QAT phase, hard projection, masked QAT phase.

:func:`run_trial` is a plain function: the Ray Tune trainable (``trials.tune``), the search and
``nxmi train`` all call it. It can report every evaluation, hand out its full state for a
checkpoint, and resume from such a state.
"""

from __future__ import annotations

import copy
import math
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
from .data import get_task, prepare_task_data
from .dense import DenseResult, finetune_dense
from .loop import BatchStream, distillation_loss, evaluate, model_inputs, resolve_device, set_seed, task_loss

Report = Callable[[dict, Callable[[], dict]], None]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


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

    def summary(self) -> dict:
        return {
            "primary": self.primary, "dense_primary": self.dense_primary, "retention": self.retention,
            "ratio_paper": self.ratio_paper, "ratio_storage": self.ratio_storage, "steps": self.steps,
            "admm_residual": self.admm_residual, "wall_time": self.wall_time, "metrics": self.metrics,
            **self.admm_at_projection,
        }


def retention(primary: float, dense_primary: float) -> float:
    return primary / dense_primary if dense_primary else float("nan")


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
            projection, their values just before it)) and a zero-argument function returning the full trial state, which
            a caller may save as a checkpoint and pass back as ``resume``.
        resume: a state from ``report``'s second argument: continue from there.
        dense: the warm start; computed (or read from its cache) when not given.
        progress: show a progress bar.
        keep_model: keep the hardened model in the result.
    """
    start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    info = get_task(config.data.task)
    if dense is None:
        dense = finetune_dense(config.data, config.dense, config.cache_dir, progress=progress)
    seed = config.data.seed if config.seed is None else config.seed
    set_seed(seed)
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(str(dense.path))
    model = load_model(str(dense.path)).to(device)
    if isinstance(plan, str):
        plan = CompressionPlan.uniform(model, plan)
    plan.validate(model)
    ratios = {c: compression_ratio(model, plan, c) for c in ("paper", "storage")}
    teacher = None
    if config.kd_alpha > 0 and config.steps > 0:
        teacher = copy.deepcopy(model).eval().requires_grad_(False)

    data = prepare_task_data(info, tokenizer, data_dir=config.data.data_dir, max_length=config.data.max_length,
                             train_size=config.data.train_size, eval_size=config.data.eval_size,
                             seed=config.data.seed, include_train=config.steps > 0,
                             holdout_size=config.data.holdout_size)
    compress_(model, plan)
    admm_steps = config.admm_steps
    admm = _make_admm(model, plan, config) if admm_steps > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(0.0, 1.0 - s / max(1, config.steps)))

    def after_hardening() -> None:
        # trained (lsq) scales exist from the hard projection on: train them too, without decay
        scales = scale_parameters(model)
        if scales:
            optimizer.add_param_group({"params": scales, "weight_decay": 0.0, "lr": config.lr,
                                       "initial_lr": config.lr})
            schedule.base_lrs.append(config.lr)
            schedule.lr_lambdas.append(schedule.lr_lambdas[0])

    step, history, hardened = 0, [], admm_steps == 0
    if resume is not None:
        step, history, hardened = resume["step"], list(resume["history"]), resume["hardened"]
        if hardened:
            harden_(model, resume["masks"], project_weights=False)
            after_hardening()
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        if admm is not None and resume.get("admm"):
            admm.load_state_dict(resume["admm"])
        for name, clip in (resume.get("clips") or {}).items():  # the soft phase's fitted clip ratios
            compressed_modules(model)[name].clip = clip.to(device)
        torch.set_rng_state(resume["rng"])
    elif hardened:
        harden_(model)  # one-shot projection of the dense weights; masks frozen from the start
        after_hardening()

    def state() -> dict:
        return {
            "step": step, "history": copy.deepcopy(history), "hardened": hardened,
            "model": {k: v.clone() for k, v in model.state_dict().items()},
            "masks": {n: m.mask.clone() for n, m in compressed_modules(model).items() if m.mask is not None},
            "clips": {n: m.clip.clone() for n, m in compressed_modules(model).items() if m.clip is not None},
            "optimizer": copy.deepcopy(optimizer.state_dict()), "schedule": copy.deepcopy(schedule.state_dict()),
            "admm": admm.state_dict() if admm is not None else None, "rng": torch.get_rng_state(),
            "admm_at_projection": admm_at_projection,
        }

    last_loss = float("nan")
    admm_at_projection = dict(resume.get("admm_at_projection") or {}) if resume else {}

    def admm_state() -> dict:
        # once hardened, W is in the constraint set; what tells how well ADMM converged is the
        # state just before the hard projection
        if admm is None:
            return {"admm_residual": None}
        diag = admm_at_projection if hardened else admm.diagnostics()
        return {"admm_residual": diag.get("admm_primal"), **diag}

    def measure(phase: str) -> dict:
        metrics = evaluate(model, data, tokenizer)
        row = {
            "step": step, "phase": phase, **metrics,
            "retention": retention(metrics["primary"], dense.primary), "loss": last_loss,
            "ratio_paper": ratios["paper"], "ratio_storage": ratios["storage"],
            **admm_state(),
        }
        history.append(row)
        if report is not None:
            report(row, state)
        return row

    stream = BatchStream(data.train, tokenizer, config.batch_size, seed) if config.steps > 0 else None
    batches = stream.from_step(step) if stream is not None else iter(())
    bar = tqdm(total=config.steps, initial=step, desc=f"trial {plan.summary()}"[:60], disable=not progress, leave=False)
    model.train()
    while step < config.steps:
        if not hardened and step >= admm_steps:
            admm_at_projection = admm.diagnostics()
            harden_(model)  # hard projection: masks frozen, weights exactly N:M and on the grid
            hardened = True
            after_hardening()
            measure("projected")
            model.train()
        batch = next(batches)
        inputs, labels = model_inputs(batch, device), batch["labels"].to(device)
        logits = model(**inputs).logits
        loss = task_loss(logits, labels, info.is_regression)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(**inputs).logits
            kd = distillation_loss(logits, teacher_logits, config.kd_temperature, info.is_regression)
            loss = (1 - config.kd_alpha) * loss + config.kd_alpha * kd
        last_loss = float(loss.detach())
        if not hardened:
            loss = loss + admm.penalty()
        if not math.isfinite(float(loss.detach())):
            raise NonFiniteLoss(f"non-finite loss {float(loss.detach())} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        if not hardened and admm.step(step):  # proximal pull every step, Z/U-steps on schedule
            refit_clips_(model)  # the soft phase's clip ratios follow the weights
        bar.update()
        bar.set_postfix(loss=f"{last_loss:.3f}", phase="qat" if hardened else "admm")
        if config.eval_every and step % config.eval_every == 0 and step < config.steps:
            measure("qat" if hardened else "admm")
            model.train()
    bar.close()
    if not hardened:
        admm_at_projection = admm.diagnostics() if admm is not None else {}
        harden_(model)
        hardened = True
    final = measure("final")
    wall = time.perf_counter() - start
    keys = [k for k in final if k not in ("step", "phase", "retention", "loss", "ratio_paper", "ratio_storage")
            and not k.startswith("admm_")]
    return TrialResult(
        plan=plan, metrics={k: final[k] for k in keys}, primary=final["primary"], dense_primary=dense.primary,
        retention=final["retention"], ratio_paper=ratios["paper"], ratio_storage=ratios["storage"],
        steps=step, admm_residual=final["admm_residual"], wall_time=wall, history=history,
        model=model if keep_model else None, admm_at_projection=dict(admm_at_projection),
    )


def _make_admm(model, plan: CompressionPlan, config: TrialConfig) -> ADMM:
    """ADMM for the trial's ADMM phase, with the mode's defaults (``TrialConfig.admm_settings``);
    in decoupled mode the phase schedule of :meth:`ADMM.for_phase` fills what is not given."""
    s = config.admm_settings()
    if config.admm_mode == "decoupled":
        return ADMM.for_phase(model, plan, config.admm_steps, updates=config.admm_updates, rho=s["rho"],
                              rho_max=s["rho_max"], interval=s["interval"], rho_growth=s["rho_growth"])
    return ADMM(model, plan, rho=s["rho"], rho_growth=s["rho_growth"], rho_max=s["rho_max"], interval=s["interval"],
                last_step=config.admm_steps, mode=config.admm_mode)

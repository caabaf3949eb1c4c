"""ADMM toward a compression plan's constraint set, in scaled form, in two modes.

For task loss ``f(W)`` and constraint set ``S`` (N:M sparse, kept values on the integer grid), with
``rho`` the penalty weight and ``U`` the scaled dual variable:

* W-step: optimizer steps on ``f(W) + (rho/2) ||W - Z + U||^2``
* Z-step: ``Z = proj_S(W + U)``                                             (:meth:`ADMM.update`)
* U-step: ``U = U + W - Z``                                                 (:meth:`ADMM.update`)
* rho-step: ``rho <- min(rho * rho_growth, rho_max)``, and ``U <- U * rho_old / rho_new`` so that the
  unscaled dual ``Lambda = rho * U`` is unchanged by the change of ``rho``.

``mode="penalty"`` (the default here and in ``TrialConfig``) puts the penalty into the loss
(:meth:`penalty`). Its gradient then goes through Adam's normalisation like any other, so a
weight moves by about the learning rate per step whatever ``rho`` is: with the trials' schedule
``W`` stays near the dense weights and the distance to ``S`` at the hard projection is about that
of the untrained weights. The ADMM phase then acts as a soft-mask straight-through phase; how much
of the recovery it owes to the penalty at all (against ``rho = 0``) has not been measured yet
(docs/decisions.md).

``mode="decoupled"`` applies the proximal step outside the optimizer, like AdamW's weight decay:
``W <- W - rho * (W - Z + U)`` after each step (:meth:`ADMM.pull_`), so ``rho`` is a dimensionless
fraction of the distance to ``Z - U`` removed per step. It reaches the set (distance ~1e-4, masks
100%) but retained 0.9-3.4 points less than the penalty form on bench/recovery.py.

Schedule of the decoupled mode (:meth:`ADMM.for_phase`): ``updates`` Z-steps spread evenly over the
phase, ``rho`` growing geometrically from ``rho`` to ``rho_max`` by the third-to-last of them, and no
Z-step in the phase's last interval (a Z-step right before the hard projection would only be thrown
away). At ``rho`` near 1 the pull puts ``W`` on ``Z - U`` within a step, and the next Z-step then gives
``U = 0`` and ``W = Z``: the phase ends on the set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import NxmiError
from .layer import project
from .masks import nm_mask
from .spec import CompressionPlan

MODES = ("decoupled", "penalty")


class ADMM:
    """Per-module ADMM state (``Z``, ``U``) for the modules a plan compresses.

    Args:
        model: the model whose weights are trained (wrapped by ``compress_`` or not).
        plan: the compression plan; modules whose spec changes nothing are skipped.
        rho: initial penalty weight; with ``mode="decoupled"`` the fraction of ``W - (Z - U)``
            removed per optimizer step, in (0, 1].
        rho_growth: factor applied to ``rho`` at every Z-step (>= 1).
        rho_max: cap on ``rho`` (at most 1 in decoupled mode).
        interval: optimizer steps between Z/U-steps, used by :meth:`step`.
        last_step: no Z-step at or after ``last_step - interval + 1`` (the last interval before the
            hard projection); ``None``: no limit.
        mode: ``"decoupled"`` (proximal step after the optimizer, :meth:`pull_`) or ``"penalty"``
            (add :meth:`penalty` to the loss).
        max_updates: no more Z-steps than this (``None``: no limit).
    """

    def __init__(
        self,
        model: nn.Module,
        plan: CompressionPlan,
        rho: float = 1e-3,
        rho_growth: float = 1.3,
        rho_max: float = 1.0,
        interval: int = 32,
        last_step: int | None = None,
        mode: str = "penalty",
        max_updates: int | None = None,
    ):
        if not (isinstance(rho, (int, float)) and rho > 0 and math.isfinite(rho)):
            raise NxmiError(f"rho must be a positive number, got {rho!r}")
        if not rho_growth >= 1:
            raise NxmiError(f"rho_growth must be >= 1, got {rho_growth!r}")
        if not rho_max >= rho:
            raise NxmiError(f"rho_max must be >= rho ({rho}), got {rho_max!r}")
        if not (isinstance(interval, int) and interval >= 1):
            raise NxmiError(f"interval must be a positive integer, got {interval!r}")
        if mode not in MODES:
            raise NxmiError(f"ADMM mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "decoupled" and rho_max > 1:
            raise NxmiError(f"rho_max must be <= 1 in decoupled mode (a fraction of the distance per step), got {rho_max!r}")
        plan.validate(model)
        self.plan = plan
        self.rho, self.rho_growth, self.rho_max, self.interval = float(rho), rho_growth, rho_max, interval
        self.last_step, self.mode, self.max_updates = last_step, mode, max_updates
        self.num_updates = 0
        self.dual_residual = 0.0
        self.weights: dict[str, nn.Parameter] = {}
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}  # Z's N:M masks (sparse specs only)
        for name, spec in plan.items():
            if spec.is_identity:
                continue
            weight = model.get_submodule(name).weight
            self.weights[name] = weight
            self.Z[name] = self._project(name, weight.detach())
            self.U[name] = torch.zeros_like(weight, requires_grad=False)

    def _project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``proj_S(x)`` for module ``name``, remembering the N:M mask it chose."""
        spec = self.plan[name]
        if not spec.is_sparse:
            return project(x, spec)
        self.masks[name] = nm_mask(x, spec.n, spec.m)
        return project(x, spec, self.masks[name])

    @classmethod
    def for_phase(
        cls, model: nn.Module, plan: CompressionPlan, steps: int, updates: int = 10,
        rho: float = 1e-4, rho_max: float = 0.7, mode: str = "decoupled",
        interval: int | None = None, rho_growth: float | None = None,
    ) -> "ADMM":
        """Decoupled-mode ADMM (the default ``mode`` here, unlike the constructor's) scheduled for a
        phase of ``steps`` optimizer steps: ``updates`` Z-steps (fewer when
        the phase is shorter), evenly spaced, none in the last interval, and ``rho`` growing
        geometrically from ``rho`` to ``rho_max`` by the third-to-last. A given ``interval`` or
        ``rho_growth`` replaces the schedule's (and with ``interval`` the count is not capped)."""
        phase_interval, phase_growth, updates = cls.schedule(steps, updates, rho, rho_max)
        return cls(model, plan, rho=rho, rho_max=rho_max, last_step=steps, mode=mode,
                   rho_growth=phase_growth if rho_growth is None else rho_growth,
                   interval=phase_interval if interval is None else interval,
                   max_updates=updates if interval is None else None)

    @staticmethod
    def schedule(steps: int, updates: int, rho: float, rho_max: float) -> tuple[int, float, int]:
        """``(interval, rho_growth, updates)`` of :meth:`for_phase`: Z-steps at ``k * interval`` for
        ``k = 1..updates``, the last one at least one interval before the phase ends."""
        if not (isinstance(steps, int) and steps >= 1):
            raise NxmiError(f"ADMM phase steps must be a positive integer, got {steps!r}")
        if not (isinstance(updates, int) and updates >= 1):
            raise NxmiError(f"ADMM updates must be a positive integer, got {updates!r}")
        updates = min(updates, max(0, steps - 1))
        interval = max(1, steps // (updates + 1))
        # rho_max is reached two Z-steps before the last: the last ones then start from W ~ Z - U,
        # so they find Z again and set U to ~0, and the final interval pulls W onto Z
        growth = (rho_max / rho) ** (1.0 / max(1, updates - 2)) if rho_max > rho and updates else 1.0
        return interval, growth, updates

    def penalty(self) -> torch.Tensor:
        """``(rho/2) * sum ||W - Z + U||^2`` in ``penalty`` mode (add it to the task loss); zero in
        ``decoupled`` mode, where :meth:`pull_` applies it."""
        if self.mode != "penalty" or not self.weights:
            return torch.zeros(())
        total = None
        for name, w in self.weights.items():
            term = (w - self.Z[name] + self.U[name]).pow(2).sum()
            total = term if total is None else total + term
        return 0.5 * self.rho * total

    @torch.no_grad()
    def pull_(self) -> None:
        """Decoupled proximal step ``W <- W - rho * (W - Z + U)``: call after each optimizer step
        (does nothing in ``penalty`` mode)."""
        if self.mode != "decoupled":
            return
        for name, w in self.weights.items():
            w.sub_(self.rho * (w - self.Z[name] + self.U[name]))

    @torch.no_grad()
    def update(self) -> None:
        """Z-step (projection of ``W + U`` onto the plan's set), U-step, then grow rho (rescaling U)."""
        change = norm = 0.0
        for name, w in self.weights.items():
            z = self._project(name, w + self.U[name])
            change += float((z - self.Z[name]).pow(2).sum())
            norm += float(w.pow(2).sum())
            self.Z[name] = z
            self.U[name] += w - z
        # dual residual of scaled ADMM, rho * ||Z_k - Z_{k-1}||, relative to ||W||
        self.dual_residual = self.rho * math.sqrt(change / norm) if norm > 0 else 0.0
        self.num_updates += 1
        self.set_rho(min(self.rho * self.rho_growth, self.rho_max))

    @torch.no_grad()
    def set_rho(self, rho: float) -> None:
        """Change ``rho``, rescaling the scaled dual ``U`` by ``rho_old / rho`` (so ``rho * U`` holds)."""
        if rho != self.rho:
            factor = self.rho / rho
            for u in self.U.values():
                u.mul_(factor)
            self.rho = float(rho)

    def step(self, global_step: int) -> bool:
        """Call after each optimizer step (1-based count): applies :meth:`pull_` and, every
        ``interval`` steps except in the last interval before ``last_step``, :meth:`update`.
        Returns whether a Z-step ran."""
        self.pull_()
        if global_step <= 0 or global_step % self.interval:
            return False
        if self.last_step is not None and global_step > self.last_step - self.interval:
            return False
        if self.max_updates is not None and self.num_updates >= self.max_updates:
            return False
        self.update()
        return True

    @torch.no_grad()
    def residual(self) -> float:
        """Primal residual ``||W - Z|| / ||W||`` over all ADMM modules together."""
        num = sum(float((w - self.Z[n]).pow(2).sum()) for n, w in self.weights.items())
        den = sum(float(w.pow(2).sum()) for w in self.weights.values())
        return math.sqrt(num / den) if den > 0 else 0.0

    @torch.no_grad()
    def module_residuals(self) -> dict[str, float]:
        """``||W - Z|| / ||W||`` per module."""
        out = {}
        for name, w in self.weights.items():
            den = float(w.norm())
            out[name] = float((w - self.Z[name]).norm()) / den if den > 0 else 0.0
        return out

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """How far the weights are from the constraint set, over all ADMM modules together.

        * ``admm_primal``: ``||W - Z|| / ||W||``
        * ``admm_dual``: ``rho * ||Z - Z_prev|| / ||W||`` at the last Z-step
        * ``admm_distance``: ``||W - proj(W)|| / ||W||``, what the hard projection will move
        * ``admm_mask_agreement``: fraction of the N:M-sparse modules' entries where ``proj(W)`` and
          ``Z`` agree on being non-zero, i.e. the masks as non-zero supports (a kept value that
          rounds to zero counts as pruned; 1 when no module is sparse)
        * ``admm_rho``
        """
        dist = den = 0.0
        agree = total = 0
        for name, w in self.weights.items():
            spec = self.plan[name]
            hard = project(w, spec)
            dist += float((w - hard).pow(2).sum())
            den += float(w.pow(2).sum())
            if spec.is_sparse:
                # the masks as supports of non-zeros: a kept value that rounds to zero is pruned
                agree += int(((hard != 0) == (self.Z[name] != 0)).sum())
                total += w.numel()
        return {
            "admm_primal": self.residual(),
            "admm_dual": self.dual_residual,
            "admm_distance": math.sqrt(dist / den) if den > 0 else 0.0,
            "admm_mask_agreement": agree / total if total else 1.0,
            "admm_rho": self.rho,
        }

    def state_dict(self) -> dict:
        return {
            "rho": self.rho,
            "num_updates": self.num_updates,
            "dual_residual": self.dual_residual,
            "Z": {k: v.clone() for k, v in self.Z.items()},
            "U": {k: v.clone() for k, v in self.U.items()},
            "masks": {k: v.clone() for k, v in self.masks.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.weights) - set(state["Z"])
        if missing:
            raise NxmiError(f"ADMM state lacks modules {sorted(missing)[:3]}...")
        self.rho = float(state["rho"])
        self.num_updates = int(state["num_updates"])
        self.dual_residual = float(state.get("dual_residual", 0.0))
        self.Z = {k: state["Z"][k].to(self.weights[k].device) for k in self.weights}
        self.U = {k: state["U"][k].to(self.weights[k].device) for k in self.weights}
        masks = state.get("masks") or {}
        for name in self.masks:
            self.masks[name] = (masks[name] if name in masks else self.Z[name] != 0).to(self.weights[name].device)

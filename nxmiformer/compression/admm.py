"""ADMM toward a compression plan's constraint set.

For task loss ``f(W)`` and constraint set ``S`` (N:M sparse, kept values on the integer grid):

* W-step: ordinary optimizer steps on ``f(W) + (rho/2) * ||W - Z + U||^2``  (:meth:`ADMM.penalty`)
* Z-step: ``Z = proj_S(W + U)``                                            (:meth:`ADMM.update`)
* U-step: ``U = U + W - Z``                                                (:meth:`ADMM.update`)

``rho`` is multiplied by ``rho_growth`` at each Z-step, capped at ``rho_max``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import NxmiError
from .layer import project
from .spec import CompressionPlan


class ADMM:
    """Per-module ADMM state (``Z``, ``U``) for the modules a plan compresses.

    Args:
        model: the model whose weights are trained (wrapped by ``compress_`` or not).
        plan: the compression plan; modules whose spec changes nothing are skipped.
        rho: initial penalty weight.
        rho_growth: factor applied to ``rho`` at every Z-step (>= 1).
        rho_max: cap on ``rho``.
        interval: optimizer steps between Z/U-steps, used by :meth:`step`.
    """

    def __init__(
        self,
        model: nn.Module,
        plan: CompressionPlan,
        rho: float = 1e-3,
        rho_growth: float = 1.3,
        rho_max: float = 1.0,
        interval: int = 32,
    ):
        if not (rho > 0 and math.isfinite(rho)):
            raise NxmiError(f"rho must be a positive number, got {rho!r}")
        if not rho_growth >= 1:
            raise NxmiError(f"rho_growth must be >= 1, got {rho_growth!r}")
        if not rho_max >= rho:
            raise NxmiError(f"rho_max must be >= rho ({rho}), got {rho_max!r}")
        if not (isinstance(interval, int) and interval >= 1):
            raise NxmiError(f"interval must be a positive integer, got {interval!r}")
        plan.validate(model)
        self.plan = plan
        self.rho, self.rho_growth, self.rho_max, self.interval = rho, rho_growth, rho_max, interval
        self.num_updates = 0
        self.weights: dict[str, nn.Parameter] = {}
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        for name, spec in plan.items():
            if spec.is_identity:
                continue
            weight = model.get_submodule(name).weight
            self.weights[name] = weight
            self.Z[name] = project(weight, spec)
            self.U[name] = torch.zeros_like(weight, requires_grad=False)

    def penalty(self) -> torch.Tensor:
        """``(rho/2) * sum ||W - Z + U||^2``: add it to the task loss."""
        total = None
        for name, w in self.weights.items():
            term = (w - self.Z[name] + self.U[name]).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.rho * total

    @torch.no_grad()
    def update(self) -> None:
        """Z-step (projection of ``W + U`` onto the plan's set), U-step, then grow rho."""
        for name, w in self.weights.items():
            spec = self.plan[name]
            self.Z[name] = project(w + self.U[name], spec)
            self.U[name] += w - self.Z[name]
        self.num_updates += 1
        self.rho = min(self.rho * self.rho_growth, self.rho_max)

    def step(self, global_step: int) -> bool:
        """Call after each optimizer step (1-based count); runs :meth:`update` every ``interval``
        steps. Returns whether it did."""
        if global_step > 0 and global_step % self.interval == 0:
            self.update()
            return True
        return False

    @torch.no_grad()
    def residual(self) -> float:
        """``||W - Z|| / ||W||`` over all ADMM modules together."""
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

    def state_dict(self) -> dict:
        return {
            "rho": self.rho,
            "num_updates": self.num_updates,
            "Z": {k: v.clone() for k, v in self.Z.items()},
            "U": {k: v.clone() for k, v in self.U.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.weights) - set(state["Z"])
        if missing:
            raise NxmiError(f"ADMM state lacks modules {sorted(missing)[:3]}...")
        self.rho = float(state["rho"])
        self.num_updates = int(state["num_updates"])
        self.Z = {k: state["Z"][k].to(self.weights[k].device) for k in self.weights}
        self.U = {k: state["U"][k].to(self.weights[k].device) for k in self.weights}

"""Optimisers and the poly learning-rate schedule (with WILSON's constant-then-poly variant)."""

from __future__ import annotations

from typing import Any

import torch

from incseg_cli.errors import UsageError


def build_optimizer(groups: list[dict[str, Any]], name: str, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """``groups`` carry their own ``lr`` (absolute) when a method wants several rates."""
    groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
        g.setdefault("lr", lr)
    if not groups:
        raise UsageError("nothing to train: every parameter is frozen")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    raise UsageError(f"unknown optimizer {name!r}; use sgd or adam")


class PolyLR:
    """lr = base · (1 − k/K)^power, stepped every iteration, k the global iteration.

    ``constant_iters`` > 0 keeps the base rate for the first iterations and then continues
    with the same formula on the global k (WILSON's "warmup" policy as coded: the rate jumps
    down when the constant phase ends).

    ``warmup_iters`` W > 0 (may be fractional) multiplies the poly factor by
    ``0.001·(1 − k/W) + k/W`` for k < W, a linear ramp from 0.001 (DKD's ``WarmupPolyLR``,
    ``utils/lr_scheduler.py``, with ``warmup_iters = 0.2·K`` on ADE)."""

    WARMUP_START = 0.001  # DKD's warmup_factor

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, power: float = 0.9,
                 constant_iters: int = 0, warmup_iters: float = 0.0) -> None:
        self.optimizer = optimizer
        self.max_iters = max(1, max_iters)
        self.power = power
        self.constant_iters = constant_iters
        self.warmup_iters = warmup_iters
        self.iteration = 0
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self._apply()

    def factor(self, k: int) -> float:
        if k < self.constant_iters:
            return 1.0
        poly = max(0.0, 1.0 - min(k, self.max_iters) / self.max_iters) ** self.power
        if k < self.warmup_iters:
            ramp = k / self.warmup_iters
            poly *= self.WARMUP_START * (1 - ramp) + ramp
        return poly

    def _apply(self) -> None:
        f = self.factor(self.iteration)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self._apply()

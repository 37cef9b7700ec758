"""The contract between the training loop and a method."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn


@dataclass
class StepInfo:
    """Where the loop is, for methods whose losses change over time (WILSON's warm-up)."""

    epoch: int
    iteration: int  # global, from 0
    iters_per_epoch: int


class Method(ABC):
    """A training method. Subclasses override ``losses`` and, when needed, the other hooks.

    ``losses`` returns named scalar losses; the loop sums them, logs each, and backpropagates.
    """

    name = "method"
    # How tables and ``train-step --method``'s help name it ("mib" → "MiB").
    # A few words that say what it is, for ``--method``'s help ("fine-tuning").
    summary = ""
    # The val images its reference code scores (docs/evaluation.md): ``seen`` (an image with a
    # class of steps 0..t: the MiB code base, which most methods build on) or ``all``.
    val_set = "seen"
    # Epochs of constant LR before poly decay (WILSON's "warmup" policy); 0 = plain poly.
    constant_lr_epochs = 0

    # Whether the step reads pixel labels of its training images (WILSON does not).
    reads_masks = True
    # DistributedDataParallel must look for parameters without gradient (WILSON's warm-up).
    ddp_find_unused_parameters = False
    # What ``--amp auto`` trains in on CUDA: the precision of the method's official code
    # ("off" = fp32, "fp16" = autocast + GradScaler, "bf16"); see engine/device.py amp_dtype.
    precision = "off"

    @classmethod
    def val_set_for(cls, loss: str | None = None) -> str:
        """The default ``--val-set`` of a run of this method (``loss``: a step 0's ``--loss``)."""
        return cls.val_set

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules besides the model (saved in the checkpoint under ``extra``)."""
        return {}

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Frozen helpers the losses need (the old model): moved to the device, never saved."""
        return {}

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        groups = [{"name": "model", "params": list(model.parameters()), "lr": lr}]
        for name, module in self.extra_modules().items():
            groups.append({"name": name, "params": list(module.parameters()), "lr": lr})
        return groups

    def train_mode(self, model: nn.Module) -> None:
        """Put the model (and extra modules) in training mode, with the method's freezing."""
        model.train()
        for module in self.extra_modules().values():
            module.train()

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap the extra trainable modules for DistributedDataParallel. The keys of
        ``extra_modules`` are the attribute names that hold them."""
        for name, module in self.extra_modules().items():
            setattr(self, name, wrap(module))

    def to(self, device: torch.device) -> "Method":
        for module in [*self.extra_modules().values(), *self.frozen_modules().values()]:
            module.to(device)
        return self

    def before_train(self, batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> None:
        """Once, at the start of a fresh run (not on resume), models on the device: a pass
        over the step's training batches (``image``, ``label``, ``index`` on the device, a fixed
        pseudo-epoch of the sampler). The batches are drawn only if the method iterates them."""

    def hooks(self) -> list[Any]:
        """Loop hooks the method contributes (objects with ``before_train``, ``after_step``,
        ``after_epoch``, ``after_train`` taking the trainer; see ``engine/trainer.Hook``)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Method state that is not a module (PLOP's thresholds), saved in ``last.pt``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` on resume (``{}`` from a ``last.pt`` without method state)."""

    def idle_parameters(self, model: nn.Module, info: StepInfo) -> list[nn.Parameter]:
        """Trainable parameters that take no part in this iteration's losses. Eager autograd
        leaves their gradients None, so SGD's momentum and weight decay skip them; a
        ``torch.compile``d model hands back zeros instead, which the loop turns into None."""
        return []

    @abstractmethod
    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor], info: StepInfo) -> dict[str, torch.Tensor]:
        """Named scalar losses of one batch (``image``, ``label``, ``index`` on the device)."""

    def header(self) -> dict[str, Any]:
        """Method settings recorded in the checkpoint header."""
        return {}

"""What an incremental step (t >= 1) gives its method: the task, the new and the old model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from incseg_cli.errors import UsageError
from incseg_cli.methods.base import Method
from incseg_cli.models.deeplab import IncrementalDeepLab
from incseg_cli.tasks import Task


@dataclass
class StepContext:
    task: Task
    step: int
    preset: str
    options: dict[str, Any]
    model: IncrementalDeepLab  # current model, new head already added
    old_model: IncrementalDeepLab  # step t-1 model, frozen, eval mode
    layout: Any
    splits_root: Path
    train_ids: list[str] = field(default_factory=list)


# train-step's method options (``--head-init`` aside, which every method uses), with the
# value each has when the command line does not set it (the CLI's defaults).
METHOD_OPTIONS: dict[str, Any] = {
    "lambda_ali": None, "lambda_kd": None, "alpha": None, "pseudo_epochs": None, "affinity": True,
    "image_labels": None, "lr_head": None, "lr_localizer": None, "lambda_enc": None,
    "pod_factor": None, "pod_logits_factor": None, "pseudo_floor": None, "pseudo_median": None,
}


def check_method_options(cls: type["StepMethod"], given: dict[str, Any]) -> None:
    """Setting an option of another method is a mistake, not a no-op: refuse it."""
    flags = []
    for key, unset in METHOD_OPTIONS.items():
        value = given.get(key, unset)
        if key in cls.options or value == unset:
            continue
        flag = key.replace("_", "-")
        flags.append(f"--no-{flag}" if value is False else f"--{flag}")
    if flags:
        raise UsageError(f"{', '.join(flags)} {'is' if len(flags) == 1 else 'are'} not used by --method {cls.name}")


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the old model and other fixed references."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class StepMethod(Method):
    """A method for steps t >= 1, built from the step's context and resolved options."""

    # How the new head starts: ``mib`` (background copy, ALIFE and MiB) or ``random``.
    head_init = "mib"
    # The keys of METHOD_OPTIONS this method reads; train-step refuses the others.
    options: tuple[str, ...] = ()

    @classmethod
    def defaults(cls, task: Task, step: int, preset: str) -> dict[str, Any]:
        """Option values this method uses when the command line leaves them unset."""
        return {}

    @classmethod
    def prepare(cls, options: dict[str, Any], task: Task, step: int, splits_root: Path,
                train_ids: list[str]) -> dict[str, Any]:
        """Check the method's own inputs before the run directory is touched (so a refusal
        leaves nothing behind) and return option values derived from the resolved ones,
        which then go into the manifest and the run's fingerprint."""
        return {}

    @classmethod
    def from_context(cls, ctx: StepContext) -> "StepMethod":
        return cls()

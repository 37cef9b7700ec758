"""What an incremental step (t >= 1) gives its method: the task, the new and the old model,
and the method's own typed options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from incseg_cli.methods.base import Method
from incseg_cli.models.deeplab import IncrementalDeepLab

from incseg_cli.tasks import Task


@dataclass(kw_only=True)
class NoOptions:
    """A method without options of its own."""


@dataclass
class ImageLabels:
    """Image-level class ids of the step's training images, loaded by the stage."""

    table: dict[str, list[int]]
    source: Optional[str]  # the --image-labels file, or None: the splits' table (old classes masked)


@dataclass
class StepData:
    """What the stage read for the step, before any model exists: for ``prepare``."""

    task: Task
    step: int
    preset: str
    run: Any  # the resolved StepRun (training settings included)
    splits_root: Path
    train_ids: list[str]
    image_labels: ImageLabels | None = None


@dataclass
class StepContext(StepData):
    """``StepData`` plus the models: for ``from_context``."""

    options: Any = None  # the method's resolved options (its ``Options`` dataclass)
    model: IncrementalDeepLab | None = None  # current model, new head already added
    old_model: IncrementalDeepLab | None = None  # step t-1 model, frozen, eval mode
    layout: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class StepMethod(Method):
    """A method for steps t >= 1, built from the step's context and its typed options.

    A method declares its options once, as the dataclass ``Options`` (``config.option``
    fields); the command line, ``--help``, the manifest and the refusal of other methods'
    options all derive from it."""

    Options: ClassVar[type] = NoOptions
    # How the new head starts: ``mib`` (background copy, ALIFE and MiB) or ``random``.
    head_init = "mib"
    # The stage loads the step's image-level label table into the context (WILSON).
    needs_image_labels = False

    @classmethod
    def defaults(cls, task: Task, step: int, preset: str) -> dict[str, Any]:
        """Values of its own or of the training settings this method uses when the command
        line leaves them unset (per task, per step, per preset)."""
        return {}

    @classmethod
    def prepare(cls, options: Any, data: StepData) -> Any:
        """Check the method's inputs before the run directory is touched (so a refusal
        leaves nothing behind) and return its options with derived values filled in; they
        go into the manifest and the run's fingerprint."""
        return options

    @classmethod
    def from_context(cls, ctx: StepContext) -> "StepMethod":
        return cls()

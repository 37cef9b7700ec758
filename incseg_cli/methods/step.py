"""What an incremental step (t >= 1) gives its method: the task, the new and the old model,
and the method's own typed options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from incseg_cli.methods.base import Method
from incseg_cli.models.deeplab import IncrementalDeepLab

from incseg_cli.tasks import Task


@dataclass(kw_only=True)
class NoOptions:
    """A method without options of its own."""


@dataclass(frozen=True, kw_only=True)
class StepDefaults:
    """What a method uses when the command line leaves an option unset: an instance of its
    ``Options`` (unset fields ``None``) and the training settings it changes for the step.
    Typed, so a misspelt option name fails where the recipe is written, not when it runs."""

    options: Any = None
    epochs: Optional[int] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    lr_warmup: Optional[float] = None
    replay_images: Optional[int] = None  # train-step --replay-images (DKD-M's memory)

    SETTINGS = ("epochs", "lr", "batch_size", "lr_warmup", "replay_images")

    def as_dict(self) -> dict[str, Any]:
        """The values it sets, by option name."""
        # the option fields it sets: those it moved off their declared default
        out = {} if self.options is None else {f.name: getattr(self.options, f.name)
                                                for f in dataclasses.fields(self.options)
                                                if getattr(self.options, f.name) != f.default}
        out.update({k: getattr(self, k) for k in self.SETTINGS if getattr(self, k) is not None})
        return out


def defaults_text(recipes: dict[str, StepDefaults], name: str) -> str:
    """``voc/toy: 0.5, coco: 0.9`` (or ``0.01`` when every recipe agrees): one option's value
    in each named recipe, for ``--help``."""
    groups: dict[str, list[str]] = {}
    for label, recipe in recipes.items():
        value = recipe.as_dict().get(name)
        if value is not None:
            groups.setdefault(f"{value:g}" if isinstance(value, float) else str(value), []).append(label)
    if len(groups) == 1 and len(next(iter(groups.values()))) == len(recipes):
        return next(iter(groups))
    return ", ".join(f"{'/'.join(labels)}: {value}" for value, labels in groups.items())


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
    def defaults(cls, task: Task, step: int, preset: str) -> StepDefaults:
        """Values of its own or of the training settings this method uses when the command
        line leaves them unset (per task, per step, per preset)."""
        return StepDefaults()

    @classmethod
    def prepare(cls, options: Any, data: StepData) -> Any:
        """Check the method's inputs before the run directory is touched (so a refusal
        leaves nothing behind) and return its options with derived values filled in; they
        go into the manifest and the run's fingerprint."""
        return options

    @classmethod
    def from_context(cls, ctx: StepContext) -> "StepMethod":
        return cls()

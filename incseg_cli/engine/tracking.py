"""Experiment tracking: the run's losses, learning rates, validation mIoU and an example grid
as TensorBoard events (``RUN/tensorboard/``) or a Weights & Biases run, for ``--log-to``.

``losses.csv`` stays the source of truth: the hook reads the rows the loop has written there
at the end of every epoch (the loop never waits on a tracker) and sends the new ones. With
every validation (the epochs of ``--val-interval``, and the stage's final evaluation, which
``finish`` sends at the last iteration) go its mIoU groups (``val/miou_GROUP``, in percent)
and one image, ``examples``: what the ``examples`` callable the stage hands over returns
(``engine.examplegrid``: fixed val images, their ground truth and the model's prediction),
drawn from that validation pass; this module knows nothing of images or stages.

Both trackers are optional packages: ``pip install 'incseg[tensorboard]'`` (``make install``
installs it) or ``pip install wandb``; asking for one that is not installed is one error line
before any work. Only rank 0 tracks; nothing here talks to the other ranks.
"""

from __future__ import annotations

import hashlib
import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import numpy as np

from incseg_cli.engine.losstable import read_losses, split_row
from incseg_cli.engine.trainer import Hook, Trainer
from incseg_cli.errors import UsageError

LOG_TARGETS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
EXAMPLES_TAG = "examples"

# Returns the example grid of the validation pass that just ran (uint8 [H, W, 3]), or None.
ExamplesSource = Callable[[], "np.ndarray | None"]


def check_log_target(target: str) -> None:
    """Refuse a tracker whose package is missing, naming what installs it."""
    if target == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--log-to tensorboard needs the tensorboard package: pip install 'incseg[tensorboard]'")
    if target == "wandb" and importlib.util.find_spec("wandb") is None:
        raise UsageError("--log-to wandb needs the wandb package: pip install wandb")


class TrackingHook(Hook, ABC):
    """Sends every new losses.csv row (losses and learning rates by iteration), and with every
    validation its mIoU and the example grid, to a tracker."""

    def __init__(self, losses_path: Path, examples: ExamplesSource | None = None) -> None:
        self.losses_path = Path(losses_path)
        self.examples = examples
        self.sent = 0  # the last iteration sent
        self.closed = False

    @abstractmethod
    def scalar(self, name: str, value: float, step: int) -> None:
        """Send one value of the series ``name`` at iteration ``step``."""

    @abstractmethod
    def image(self, name: str, rgb: np.ndarray, step: int) -> None:
        """Send the uint8 [H, W, 3] picture ``name`` at iteration ``step``."""

    def flush(self) -> None:
        """Make what was sent durable (end of an epoch)."""

    def _close(self, ok: bool) -> None:
        """End the tracker's run (``ok``: the stage finished)."""

    def close(self, ok: bool = True) -> None:
        """End the tracker's run once, whether the stage finished or failed."""
        if not self.closed:
            self.closed = True
            self._close(ok)

    def before_train(self, trainer: Trainer) -> None:
        self.sent = trainer.iteration  # a resumed run sent the rows before already

    def _send_rows(self) -> None:
        _, rows = read_losses(self.losses_path)
        for row in rows:
            iteration = int(row["iteration"])
            if iteration <= self.sent:
                continue
            _, losses = split_row(row)
            for name, value in losses.items():
                self.scalar(f"loss/{name}", float(value), iteration)
            for k, value in ((k, v) for k, v in row.items() if k.startswith("lr_")):
                self.scalar(f"lr/{k[3:]}", float(value), iteration)
            self.sent = iteration

    def _send_validation(self, miou: dict[str, Any], step: int) -> None:
        for group, value in miou.items():
            if value is not None:
                self.scalar(f"val/miou_{group}", 100 * float(value), step)
        grid = self.examples() if self.examples is not None else None
        if grid is not None:
            self.image(EXAMPLES_TAG, grid, step)

    def after_epoch(self, trainer: Trainer) -> None:
        self._send_rows()
        if "val_miou" in trainer.epoch_record:  # validation ran after this epoch
            self._send_validation(trainer.epoch_record["val_miou"] or {}, trainer.iteration)
        self.flush()

    def after_train(self, trainer: Trainer) -> None:
        self._send_rows()
        self.flush()

    def finish(self, miou: dict[str, Any], step: int) -> None:
        """Send the stage's final evaluation (at the last iteration, ``step``) and end the run."""
        self._send_validation(miou, step)
        self.close()


class TensorBoardHook(TrackingHook):
    def __init__(self, run_dir: Path, losses_path: Path, examples: ExamplesSource | None = None) -> None:
        super().__init__(losses_path, examples)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))

    def scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def image(self, name: str, rgb: np.ndarray, step: int) -> None:
        self.writer.add_image(name, rgb, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def _close(self, ok: bool) -> None:
        self.writer.close()


class WandbHook(TrackingHook):
    def __init__(self, run_dir: Path, losses_path: Path, config: dict[str, Any],
                 examples: ExamplesSource | None = None) -> None:
        super().__init__(losses_path, examples)
        import wandb

        self.wandb = wandb
        # resumable by the run directory's name; offline unless the user configured W&B
        key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(dir=str(run_dir), name=Path(run_dir).name, config=config, resume="allow",
                              id=f"incseg-{key}")

    def scalar(self, name: str, value: float, step: int) -> None:
        self.run.log({name: value}, step=step)

    def image(self, name: str, rgb: np.ndarray, step: int) -> None:
        self.run.log({name: self.wandb.Image(rgb)}, step=step)

    def _close(self, ok: bool) -> None:
        # a failed stage shows as failed in W&B (it resumes under the same id)
        self.run.finish(exit_code=0 if ok else 1)


def tracking_hooks(target: str, run_dir: Path, losses_path: Path, config: dict[str, Any],
                   examples: ExamplesSource | None = None) -> list[TrackingHook]:
    """The hook of ``--log-to`` (none: no hook); ``examples`` draws the grid of a validation."""
    if target == "tensorboard":
        return [TensorBoardHook(run_dir, losses_path, examples)]
    if target == "wandb":
        return [WandbHook(run_dir, losses_path, config, examples)]
    return []

"""Experiment tracking: the run's losses, learning rates and validation mIoU as TensorBoard
events (``RUN/tensorboard/``) or a Weights & Biases run, for ``--log-to``.

``losses.csv`` stays the source of truth: the hook reads the rows the loop has written there
at the end of every epoch (the loop never waits on a tracker) and sends the new ones. Both
trackers are optional packages: ``pip install 'incseg[tensorboard]'`` (``make install``
installs it) or ``pip install wandb``; asking for one that is not installed is one error line
before any work.
"""

from __future__ import annotations

import hashlib
import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from incseg_cli.engine.losstable import read_losses, split_row
from incseg_cli.engine.trainer import Hook, Trainer
from incseg_cli.errors import UsageError

LOG_TARGETS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"


def check_log_target(target: str) -> None:
    """Refuse a tracker whose package is missing, naming what installs it."""
    if target == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--log-to tensorboard needs the tensorboard package: pip install 'incseg[tensorboard]'")
    if target == "wandb" and importlib.util.find_spec("wandb") is None:
        raise UsageError("--log-to wandb needs the wandb package: pip install wandb")


class TrackingHook(Hook, ABC):
    """Sends every new losses.csv row (losses and learning rates by iteration) and the epoch's
    validation mIoU to a tracker."""

    def __init__(self, losses_path: Path) -> None:
        self.losses_path = Path(losses_path)
        self.sent = 0  # the last iteration sent

    @abstractmethod
    def scalar(self, name: str, value: float, step: int) -> None:
        """Send one value of the series ``name`` at iteration ``step``."""

    def flush(self) -> None:
        """Make what was sent durable (end of an epoch)."""

    def close(self) -> None:
        """End the tracker's run."""

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

    def after_epoch(self, trainer: Trainer) -> None:
        self._send_rows()
        for group, value in (trainer.epoch_record.get("val_miou") or {}).items():
            if value is not None:
                self.scalar(f"val/miou_{group}", 100 * float(value), trainer.iteration)
        self.flush()

    def after_train(self, trainer: Trainer) -> None:
        self._send_rows()
        self.close()


class TensorBoardHook(TrackingHook):
    def __init__(self, run_dir: Path, losses_path: Path) -> None:
        super().__init__(losses_path)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR))

    def scalar(self, name: str, value: float, step: int) -> None:
        self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbHook(TrackingHook):
    def __init__(self, run_dir: Path, losses_path: Path, config: dict[str, Any]) -> None:
        super().__init__(losses_path)
        import wandb

        # resumable by the run directory's name; offline unless the user configured W&B
        key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(dir=str(run_dir), name=Path(run_dir).name, config=config, resume="allow",
                              id=f"incseg-{key}")

    def scalar(self, name: str, value: float, step: int) -> None:
        self.run.log({name: value}, step=step)

    def close(self) -> None:
        self.run.finish()


def tracking_hooks(target: str, run_dir: Path, losses_path: Path, config: dict[str, Any]) -> list[Hook]:
    """The hook of ``--log-to`` (none: no hook)."""
    if target == "tensorboard":
        return [TensorBoardHook(run_dir, losses_path)]
    if target == "wandb":
        return [WandbHook(run_dir, losses_path, config)]
    return []

"""Input resolution shared by the stages: task, dataset root, split files, their hashes."""

from __future__ import annotations

from pathlib import Path

from incseg_cli.data.layouts import open_layout
from incseg_cli.data.splits import default_splits_root, load_split
from incseg_cli.errors import InputError
from incseg_cli.fileio import sha256_file
from incseg_cli.tasks import Task


def splits_root(path: str | Path | None) -> Path:
    return Path(path) if path else default_splits_root()


def split_file(root: Path, task: Task, step: int) -> Path:
    return root / task.dataset / task.key / f"train-{step}.txt"


def training_ids(root: Path, task: Task, step: int) -> tuple[list[str], dict[str, str]]:
    """The step's training ids and ``{file: sha256}`` of the split file, for the manifest."""
    ids = load_split(root, task, step)
    path = split_file(root, task, step)
    return ids, {str(path): sha256_file(path)}


def check_files(layout, split: str, ids: list[str], masks: bool = True) -> None:
    """Every listed image (and mask) exists: fail before training, naming the first missing."""
    for image_id in ids:
        if not layout.image_path(split, image_id).is_file():
            raise InputError(f"{layout.image_path(split, image_id)}: image listed in the {split} split is missing")
        if masks and not layout.mask_path(split, image_id).is_file():
            raise InputError(f"{layout.mask_path(split, image_id)}: mask of {split} image {image_id} is missing")


def open_data(dataset: str, root: str | Path, label_space: str | None = None):
    return open_layout(dataset, root, label_space)


def default_run_dir(task: Task, step: int, method: str) -> Path:
    name = "step0" if step == 0 else f"step{step}-{method}"
    return Path("runs") / task.dataset / task.key / name

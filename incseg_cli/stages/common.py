"""Input resolution shared by the stages: task, dataset root, split files, their hashes."""

from __future__ import annotations

import dataclasses
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, TypeVar

from incseg_cli import config, datasets, presets
from incseg_cli.config import option
from incseg_cli.console import log
from incseg_cli.datasets import open_layout
from incseg_cli.datasets.layout import DatasetLayout
from incseg_cli.data.splitroots import task_splits_root
from incseg_cli.data.splits import check_split_root, load_split, prepare_command, prepare_splits
from incseg_cli.data.valsets import select_val_ids
from incseg_cli.engine.checkpoint import Checkpoint, check_task
from incseg_cli.errors import IncompatibleError, InputError, UsageError
from incseg_cli.fileio import sha256_file
from incseg_cli.tasks import Task

T = TypeVar("T")


@dataclass(kw_only=True)
class DataOptions:
    """Where a stage reads the step's images, and which recipe fills unset options."""

    data: Path = option(required=True, help="Dataset root: VOC, COCO or ADE20K (docs/gpu-box.md), "
                                            "or your own (docs/own-data.md).")
    splits: Optional[Path] = option(help="Splits root holding DATASET/TASK/train-T.txt. "
                                         "[$INCSEG_SPLITS, else the first of ./splits, "
                                         "~/.local/share/incseg/splits and the shipped splits that has the task]")
    preset: Optional[str] = option(help="Defaults for unset options: voc, coco, ade (the papers' recipes) or toy "
                                        "(CPU minutes). [the dataset's]", choices=lambda: list(presets.BASE_PRESETS))


@dataclass(kw_only=True)
class RunOptions(DataOptions):
    """``DataOptions`` and the run directory a training stage writes."""

    out: Optional[Path] = option(help="Run directory to write. [runs/DATASET/TASK/stepT[-METHOD]]")
    force: bool = option(False, volatile=True, flag="--force",
                         help="Discard an existing run in --out and start over (the old run is kept until the "
                              "new one has written last.pt).")


def preset_table(preset: str, tables: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    if preset not in tables:
        raise UsageError(f"unknown preset {preset!r}; known: {', '.join(tables)}")
    return tables[preset]


def preset_of(opts: Any, dataset: str) -> str:
    """``--preset``, or the dataset's own (a dataset of one's own names it in its description)."""
    return opts.preset or presets.default_preset(dataset)


def resolve_recipe(opts: T, dataset: str, tables: Mapping[str, Mapping[str, Any]], *defaults: Mapping[str, Any]) -> T:
    """The one precedence rule of every stage: what the user gave, then each of ``defaults``
    in turn (the method's or the stage's values for the task and step), then the preset
    (``preset_of``) from ``tables``. A preset-filled option still unset is refused, and the
    filled values are checked as given ones are (ranges, choices)."""
    preset = preset_of(opts, dataset)
    opts = config.fill(dataclasses.replace(opts, preset=preset), *defaults, preset_table(preset, tables))
    missing = [config.flag_name(f.name) for f in config.declared(opts) if getattr(opts, f.name) is None
               and (f.metadata.get("preset") or any(f.name in d for d in defaults))]
    if missing:
        raise UsageError(f"no value for {', '.join(missing)} (set it, or choose a --preset that has one)")
    return config.validate(opts)


def splits_root(path: str | Path | None, task: Task) -> Path:
    return Path(path) if path else task_splits_root(task)


def split_file(root: Path, task: Task, step: int) -> Path:
    return root / task.dataset / task.key / f"train-{step}.txt"


def training_ids(root: Path, task: Task, step: int) -> tuple[list[str], dict[str, str]]:
    """The step's training ids and ``{file: sha256}`` of the split file, for the manifest."""
    ids = load_split(root, task, step)
    path = split_file(root, task, step)
    return ids, {str(path): sha256_file(path)}


def _check_listed(path: Path, what: str) -> None:
    try:
        info = path.stat()
    except OSError:
        raise InputError(f"{path}: {what} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: {what} is not a regular file")
    if info.st_size == 0:
        raise InputError(f"{path}: {what} is empty (0 bytes)")


def check_files(layout, split: str, ids: list[str], masks: bool = True) -> None:
    """Every listed image (and mask) is a non-empty file: fail before training, naming the
    first that is not. One stat each: an empty file in the last batch's dropped remainder, or
    in a later epoch's, is found now, not after hours or never."""
    for image_id in ids:
        _check_listed(layout.image_path(split, image_id), f"image listed in the {split} split")
        if masks:
            _check_listed(layout.mask_path(split, image_id), f"mask of {split} image {image_id}")


def step_data(task: Task, step: int, data: Path, splits: Path | None
              ) -> tuple[DatasetLayout, Path, list[str], dict[str, str]]:
    """The dataset of ``step`` (in ``data``), the splits root (``splits`` or the default),
    the step's training ids and ``{split file: sha256}``."""
    layout = open_layout(task.step_datasets[step], data, task.dataset)
    root = splits_root(splits, task)
    ensure_splits(task, root, data)
    ids, inputs = training_ids(root, task, step)
    check_split_root(layout, "train", ids, split_file(root, task, step), task, root, data)
    return layout, root, ids, inputs


def ensure_splits(task: Task, root: Path, data: Path) -> None:
    """A dataset of one's own whose task has no split files yet gets them now, from its
    masks, as ``prepare-splits`` would write them (said in one line); a built-in dataset's
    missing splits are an error naming the command, with this ``--data``."""
    if (root / task.dataset / task.key / "task.json").is_file():
        return
    if task.dataset in datasets.builtin_names():
        raise InputError(f"no split files for {task.dataset}/{task.key} in {root / task.dataset / task.key}: run "
                         f"`{prepare_command(task, root, data)}`")
    log(f"no split files for {task.dataset}/{task.key} in {root}: preparing them from the masks of {data} "
        f"(`{prepare_command(task, root, data)}`)")
    prepare_splits(task.dataset, [task.key], root, data=data, workers=presets.default_workers())


def training_data(task: Task, step: int, run: Any, train_masks: bool = True
                  ) -> tuple[DatasetLayout, Path, list[str], list[str], dict[str, str]]:
    """``step_data`` of ``run.data``/``run.splits`` plus the val ids of ``run.val_set``
    (``data/valsets.py``), every listed file checked: what a training stage reads."""
    layout, root, train_ids, inputs = step_data(task, step, run.data, run.splits)
    val = select_val_ids(layout, task, step, run.val_set, root, run.workers or 0)
    if val.table is not None:  # another table would choose other val images
        inputs[str(val.table)] = sha256_file(val.table)
    log(f"validation on the {val.describe()}")
    check_files(layout, "train", train_ids, masks=train_masks)
    check_files(layout, "val", val.ids)
    return layout, root, train_ids, val.ids, inputs


def check_step_parent(current: Checkpoint, parent: Checkpoint, parent_sha: str, option: str) -> None:
    """``current`` is a run of a step t >= 1 trained from ``parent`` (named ``option`` in the
    messages), the step t-1 model of the same task."""
    task, t = current.task, current.step
    if t < 1:
        raise IncompatibleError(f"{current.path}: is a step-0 run; --current must be the Step-1 run of a step t >= 1")
    if parent.step != t - 1:
        raise IncompatibleError(f"{parent.path}: is a step-{parent.step} run; {option} must be the step-{t - 1} "
                                f"model that --current {current.path} (step {t}) was trained from")
    check_task(parent, task, t - 1)
    if current.header.get("parent_sha256") != parent_sha:
        raise IncompatibleError(f"{current.path}: was trained from checkpoint "
                                f"{str(current.header.get('parent_sha256'))[:12]}, not from {option} {parent.path}")


def default_run_dir(task: Task, step: int, method: str) -> Path:
    name = "step0" if step == 0 else f"step{step}-{method}"
    return Path("runs") / task.dataset / task.key / name

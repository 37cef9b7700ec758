"""Which val images a step is scored on: ``all`` (WILSON) or ``seen`` (MiB, PLOP, ALIFE).

- ``all``: every image of the val list, at every step. WILSON's dataset code never reads its
  val index files, so it tests on all 1,449 VOC val images.
- ``seen``: at step t, the val images whose mask holds at least one class of steps 0..t other
  than label 0 (VOC background, ADE "other"): MiB's and PLOP's ``filter_images`` on the val
  set, ALIFE's ``datasets/{voc,ade}/<task>-ov/test-{t}.npy``. On VOC that is 15-5: 1,240 then 1,449
  images; 10-10: 869 then 1,449; 15-1: 1,240 / 1,277 / 1,329 / 1,353 / 1,421 / 1,449.

Per-image class presence comes from the label table ``<splits>/<dataset>/labels-val.tsv``
when it lists every val image of the root (the VOC one is shipped), else from one scan of the
val masks, cached under ``$INCSEG_CACHE_DIR`` (default ``~/.cache/incseg``) and keyed by the
root, the label space and every mask's size and modification time, so a changed mask is
rescanned.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incseg_cli.console import log
from incseg_cli.data.splitroots import default_splits_root
from incseg_cli.data.splits import read_label_table, voc_table_as_coco, scan_masks, write_label_table
from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli.errors import IncsegError, InputError, OutputError, UsageError
from incseg_cli.tasks import Task

VAL_SETS = ("all", "seen")
VAL_LABELS_FILE = "labels-val.tsv"

def check_val_set(name: str) -> str:
    if name not in VAL_SETS:
        raise UsageError(f"--val-set must be one of {', '.join(VAL_SETS)}, got {name!r}")
    return name


@dataclass
class ValSelection:
    """The val images of one evaluation and where their class sets came from."""

    name: str
    ids: list[str]
    total: int  # images in the root's val list
    classes_from: str | None  # label table path or "a scan of the val masks"; None for ``all``
    table: Path | None = None  # the label table file, when one gave the classes

    def describe(self) -> str:
        where = f", classes from {self.classes_from}" if self.classes_from else ""
        return f"val set {self.name}: {len(self.ids):,} of {self.total:,} images{where}"


def seen_ids(ids: list[str], table: dict[str, list[int]], task: Task, step: int) -> list[str]:
    """The ids (in list order) whose class set meets the classes of steps 0..``step``
    other than label 0."""
    wanted = set(task.seen_classes(step)) - {0, IGNORE_INDEX}
    return [i for i in ids if wanted.intersection(table[i])]


def select_val_ids(layout: Any, task: Task, step: int, val_set: str,
                   splits_root: str | os.PathLike | None = None, workers: int = 0) -> ValSelection:
    """The val ids of ``step`` under ``val_set``; ``InputError`` if none is left."""
    check_val_set(val_set)
    ids = layout.ids("val")
    if val_set == "all":
        return ValSelection("all", ids, len(ids), None)
    classes = val_image_classes(layout, splits_root, workers)
    chosen = seen_ids(ids, classes.table, task, step)
    if not chosen:
        raise InputError(f"{layout.root}: no val image contains a class of steps 0..{step} of "
                         f"{task.dataset}/{task.key} (classes from {classes.source}); use --val-set all")
    return ValSelection("seen", chosen, len(ids), classes.source, classes.path)


# -- class presence -------------------------------------------------------------------------------
@dataclass
class ValClasses:
    table: dict[str, list[int]]  # val image id -> class ids present (label space of the layout)
    source: str  # where they came from, for logs
    path: Path | None  # the splits' label table, when it gave them


def val_image_classes(layout: Any, splits_root: str | os.PathLike | None = None,
                      workers: int = 0) -> ValClasses:
    """Class ids present in every val mask of ``layout`` (in its label space): from the
    splits' ``labels-val.tsv`` if it covers the val list, else from a (cached) mask scan."""
    ids = layout.ids("val")
    path = (Path(splits_root) if splits_root else default_splits_root(layout.dataset, VAL_LABELS_FILE)
            ) / layout.dataset / VAL_LABELS_FILE
    if path.is_file():
        table = read_label_table(path)
        # A table of another root (the shipped VOC one beside toy data) does not list its ids.
        if all(i in table for i in ids):
            if layout.label_space != layout.dataset:  # VOC val read in COCO ids (coco-voc step 1)
                table = voc_table_as_coco(table)
            return ValClasses(table, str(path), path)
    return _scanned(layout, ids, workers)


def cache_dir() -> Path:
    env = os.environ.get("INCSEG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "incseg"


def _cache_key(layout: Any, ids: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{Path(layout.root).resolve()}\0{layout.dataset}\0{layout.label_space}\0".encode())
    for image_id in ids:
        path = layout.mask_path("val", image_id)
        try:
            st = path.stat()
            digest.update(f"{image_id}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            raise InputError(f"{path}: mask of val image {image_id} is missing") from None
    return digest.hexdigest()[:32]


def _scanned(layout: Any, ids: list[str], workers: int) -> ValClasses:
    path = cache_dir() / "val-classes" / f"{_cache_key(layout, ids)}.tsv"
    source = f"a scan of the val masks (cached in {path})"
    if path.is_file():
        try:
            table = read_label_table(path)
            if all(i in table for i in ids):
                return ValClasses(table, source, None)
        except IncsegError:
            pass  # a damaged cache file is rescanned and replaced
    log(f"{layout.root}: reading the {len(ids):,} val masks once for their classes (--val-set seen)")
    table = scan_masks(layout, "val", workers=max(workers, 1))
    try:
        write_label_table(path, table)
    except (OSError, OutputError) as err:
        log(f"note: cannot cache the val classes ({err}); they will be scanned again")
        source = "a scan of the val masks"
    return ValClasses(table, source, None)

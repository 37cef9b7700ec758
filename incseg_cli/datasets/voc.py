"""PASCAL VOC 2012 (with SBD's SegmentationClassAug): 20 classes plus background."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from incseg_cli.datasets.base import DatasetInfo, bit_palette
from incseg_cli.datasets.coco import voc_to_coco_lut
from incseg_cli.datasets.layout import DatasetLayout, check_split, invalid_values, read_lines, valid_label_table
from incseg_cli.errors import InputError, UsageError

CLASS_NAMES: tuple[str, ...] = tuple(
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor".split()
)
assert len(CLASS_NAMES) == 21

STANDARD_TASKS = ("offline", "19-1", "15-5", "15-1", "10-10", "10-1", "5-3")
EXPECTED_COUNTS = {"train": 10582, "val": 1449}


class VOCLayout(DatasetLayout):
    """PASCAL VOC 2012 with SBD's SegmentationClassAug (train_aug = 10,582, val = 1,449)."""

    dataset = "voc"
    expected_counts = EXPECTED_COUNTS
    LIST_NAMES = {"train": ("train_aug", "train"), "val": ("val",)}
    LIST_DIRS = ("ImageSets/Segmentation", "list", "splits")
    MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")

    def __init__(self, root: str | os.PathLike, label_space: str | None = None,
                 class_names: Sequence[str] = ()) -> None:
        self._list_files: dict[str, Path] = {}
        self._image_override: dict[str, dict[str, Path]] = {}
        self._mask_override: dict[str, dict[str, Path]] = {}
        super().__init__(root, label_space, class_names)
        if self.label_space not in ("voc", "coco"):
            raise UsageError(f"the VOC layout reads labels as voc or coco ids, not {self.label_space!r}")
        classes_txt = self.root / "classes.txt"
        if self.label_space == "voc" and classes_txt.is_file():
            names = read_lines(classes_txt)
            if len(names) != len(CLASS_NAMES):
                raise InputError(
                    f"{classes_txt}: {len(names)} class names, expected {len(CLASS_NAMES)} "
                    "(one per line for labels 0..20)"
                )
            self.class_names = names
        self._lut = voc_to_coco_lut() if self.label_space == "coco" else None

    def _check_root(self) -> None:
        super()._check_root()
        if not (self.root / "JPEGImages").is_dir():
            hint = ""
            for sub in ("VOC2012", "VOCdevkit/VOC2012"):
                if (self.root / sub / "JPEGImages").is_dir():
                    hint = f" (did you mean {self.root / sub}?)"
            raise InputError(f"{self.root}: no JPEGImages/ directory{hint}")
        if not any((self.root / d).is_dir() for d in self.MASK_DIRS):
            raise InputError(f"{self.root}: no SegmentationClassAug/ (or SegmentationClass/) directory")

    def list_candidates(self, split: str) -> list[Path]:
        check_split(split)
        return [self.root / d / f"{n}.txt" for n in self.LIST_NAMES[split] for d in self.LIST_DIRS]

    def list_file(self, split: str) -> Path:
        if split not in self._list_files:
            for path in self.list_candidates(split):
                if path.is_file():
                    self._list_files[split] = path
                    break
            else:
                tried = ", ".join(str(p.relative_to(self.root)) for p in self.list_candidates(split))
                raise InputError(f"{self.root}: no image list for split {split} (looked for {tried})")
        return self._list_files[split]

    def list_source(self, split: str) -> str:
        return str(self.list_file(split))

    def _load_ids(self, split: str) -> list[str]:
        path = self.list_file(split)
        ids: list[str] = []
        images: dict[str, Path] = {}
        masks: dict[str, Path] = {}
        for line in read_lines(path):
            fields = line.split()
            if "/" in fields[0] or fields[0].lower().endswith((".jpg", ".jpeg", ".png")):
                # WILSON/MiB "splits/" style: "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
                image_id = Path(fields[0]).stem
                images[image_id] = self.root / fields[0].lstrip("/")
                if len(fields) > 1:
                    masks[image_id] = self.root / fields[1].lstrip("/")
            else:
                image_id = fields[0]
            ids.append(image_id)
        self._image_override[split] = images
        self._mask_override[split] = masks
        return ids

    def image_path(self, split: str, image_id: str) -> Path:
        if split in self._image_override and image_id in self._image_override[split]:
            return self._image_override[split][image_id]
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, split: str, image_id: str) -> Path:
        if split not in self._mask_override:
            try:
                self.ids(split)
            except InputError:
                pass
        override = self._mask_override.get(split, {}).get(image_id)
        if override is not None and override.is_file():
            return override
        first = self.root / self.MASK_DIRS[0] / f"{image_id}.png"
        if first.is_file():
            return first
        second = self.root / self.MASK_DIRS[1] / f"{image_id}.png"
        if second.is_file():
            return second
        return override if override is not None else first

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        mask = self.read_raw_mask(split, image_id)
        if self._lut is None:
            return mask
        bad = invalid_values(mask, valid_label_table(len(CLASS_NAMES)))
        if bad:
            raise InputError(
                f"{self.mask_path(split, image_id)}: mask value {bad[0]} is not a VOC label (0..20 or 255)"
            )
        return self._lut[mask]


# The published alternative class orders (datasets/orders.py): PLOP's tasks.py
# tasks_voc["15-5s_b"] ... ["15-5s_w"] as one sequence each (step 0 in PLOP's list order, then
# steps 1..5), and MiB's tasks.py tasks_voc["19-1b"].
VOC_ORDERS: dict[str, tuple[int, ...]] = {
    "plop-b": (12, 9, 20, 7, 15, 8, 14, 16, 5, 19, 4, 1, 13, 2, 11, 17, 3, 6, 18, 10),
    "plop-c": (13, 19, 15, 17, 9, 8, 5, 20, 4, 3, 10, 11, 18, 16, 7, 12, 14, 6, 1, 2),
    "plop-d": (15, 3, 2, 12, 14, 18, 20, 16, 11, 1, 19, 8, 10, 7, 17, 6, 5, 13, 9, 4),
    "plop-e": (7, 5, 3, 9, 13, 12, 14, 19, 10, 2, 1, 4, 16, 8, 17, 15, 18, 6, 11, 20),
    "plop-f": (7, 13, 5, 11, 9, 2, 15, 12, 14, 3, 20, 1, 16, 4, 18, 8, 6, 10, 19, 17),
    "plop-g": (7, 5, 9, 1, 15, 18, 14, 3, 20, 10, 4, 19, 11, 17, 16, 12, 8, 6, 2, 13),
    "plop-h": (12, 9, 19, 6, 4, 10, 5, 18, 14, 15, 16, 3, 8, 7, 11, 13, 2, 20, 17, 1),
    "plop-i": (13, 10, 15, 8, 7, 19, 4, 3, 16, 12, 14, 11, 5, 20, 6, 2, 18, 9, 17, 1),
    "plop-j": (1, 14, 9, 5, 2, 15, 8, 20, 6, 16, 18, 7, 11, 10, 19, 3, 4, 17, 12, 13),
    "plop-k": (16, 13, 1, 11, 12, 18, 6, 14, 5, 3, 7, 9, 20, 19, 15, 4, 2, 10, 8, 17),
    "plop-l": (10, 7, 6, 19, 16, 8, 17, 1, 14, 4, 9, 3, 15, 11, 12, 2, 18, 20, 13, 5),
    "plop-m": (18, 4, 14, 17, 12, 10, 7, 3, 9, 1, 8, 15, 6, 13, 2, 5, 11, 20, 16, 19),
    "plop-n": (5, 4, 13, 18, 14, 10, 19, 15, 7, 9, 3, 2, 8, 16, 20, 1, 12, 11, 6, 17),
    "plop-o": (9, 12, 13, 18, 7, 1, 15, 17, 10, 8, 4, 5, 20, 16, 6, 14, 19, 11, 2, 3),
    "plop-p": (9, 12, 13, 18, 2, 11, 15, 17, 10, 8, 4, 5, 20, 16, 6, 14, 19, 1, 7, 3),
    "plop-q": (3, 14, 13, 18, 2, 11, 15, 17, 10, 8, 4, 5, 20, 16, 6, 12, 19, 1, 7, 9),
    "plop-r": (3, 14, 13, 1, 2, 11, 15, 17, 7, 8, 4, 5, 9, 16, 19, 12, 6, 18, 10, 20),
    "plop-s": (3, 14, 6, 1, 2, 11, 12, 17, 7, 20, 4, 5, 9, 16, 19, 15, 13, 18, 10, 8),
    "plop-t": (3, 15, 13, 1, 2, 11, 18, 17, 7, 20, 8, 5, 9, 16, 19, 14, 6, 12, 10, 4),
    "plop-u": (3, 15, 13, 14, 6, 11, 18, 17, 7, 20, 8, 4, 9, 16, 10, 1, 2, 12, 19, 5),
    "plop-v": (1, 2, 12, 14, 6, 19, 18, 17, 5, 20, 8, 4, 9, 16, 10, 3, 15, 13, 11, 7),
    "plop-w": (1, 2, 12, 14, 13, 19, 18, 7, 11, 20, 8, 4, 9, 16, 10, 3, 15, 6, 5, 17),
    "mib-b": (1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 5),
}


INFO = DatasetInfo(
    name="voc",
    class_names=CLASS_NAMES,
    palette=bit_palette(),
    layout=VOCLayout,  # called as (root, label_space)
    foreground=20,
    standard_tasks=STANDARD_TASKS,
    preset="voc",
    recipe={},
    step_recipe={"lr": 1e-3},
    expected_counts=EXPECTED_COUNTS,
    orders=VOC_ORDERS,
    help="PASCAL VOC 2012 + SBD (JPEGImages/, SegmentationClassAug/, ImageSets/Segmentation/)",
)

"""COCO 2017 in the layout ``--dataset coco`` reads, from the COCO image zips and COCO-Stuff.

The pixel labels come from COCO-Stuff's ``stuffthingmaps_trainval2017.zip`` (Caesar et al.,
"COCO-Stuff: Thing and Stuff Classes in Context", CVPR 2018; github.com/nightrome/cocostuff):
one PNG per image whose value is the COCO-Stuff label minus one (0 = person, ..., 90 =
COCO id 91; 91..181 = the stuff classes) and 255 where nothing is labelled. WILSON's COCO
labels are thing ids 1..90 with 0 for everything else, so a value v <= 90 becomes v + 1,
a stuff value becomes 0 (background) and 255 stays 255 (void, ignored by the loss and the
metric). The VOC-to-COCO map of WILSON's ``make_cocovoc.py`` (``datasets/coco.py``) is
written in the same ids (person = 1, ..., tv = 72), so VOC masks read as COCO line up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from incseg_cli.data.splits import map_ids
from incseg_cli.errors import CorruptFileError
from incseg_cli.fileio import atomic_dir

SPLITS = ("train2017", "val2017")
THING_VALUES = 91  # COCO-Stuff labels 1..91 are things, stored as 0..90
VOID = 255


def stuff_to_things() -> np.ndarray:
    """uint8 [256]: COCO-Stuff map value -> WILSON's COCO label."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:THING_VALUES] = np.arange(1, THING_VALUES + 1, dtype=np.uint8)
    lut[VOID] = VOID
    return lut


_LUT = stuff_to_things()


def convert_map(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            values = np.asarray(image)
    except (OSError, ValueError) as err:
        raise CorruptFileError(f"{path}: unreadable COCO-Stuff map ({err})") from None
    if values.ndim != 2 or values.dtype != np.uint8:
        raise CorruptFileError(f"{path}: not a COCO-Stuff label map (shape {values.shape}, {values.dtype})")
    return _LUT[values]


def _convert_one(dirs: tuple[Path, Path], split: str, image_id: str) -> None:
    maps, out = dirs
    labels = convert_map(maps / split / f"{image_id}.png")
    image = Image.frombytes("L", (labels.shape[1], labels.shape[0]), np.ascontiguousarray(labels).tobytes())
    image.save(out / f"{image_id}.png")


def build_annotations(maps_root: Path, coco_root: Path, workers: int = 2) -> dict[str, int]:
    """``coco_root/annotations/<split>/<id>.png`` for every map under ``maps_root/<split>``,
    each split's folder written as a whole. Returns the number of maps per split."""
    counts = {}
    for split in SPLITS:
        ids = sorted(p.stem for p in (maps_root / split).glob("*.png"))
        with atomic_dir(coco_root / "annotations" / split) as out:
            for _ in map_ids((maps_root, out), split, ids, _convert_one, workers, f"COCO-Stuff {split} maps"):
                pass
        counts[split] = len(ids)
    return counts

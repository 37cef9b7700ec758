"""COCO 2017 with COCO-Stuff thing maps (WILSON's COCO-to-VOC setting): thing ids 1..90."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from incseg_cli.datasets.base import IGNORE_INDEX, DatasetInfo, TaskDef, bit_palette
from incseg_cli.datasets.layout import SubdirLayout, check_split, read_lines

# COCO-Stuff "thing" ids as they appear in the label PNGs (id 0 = background/stuff, 255 = ignore).
# Ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 and 91 are unused and never occur.
THINGS: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(THINGS.get(i, f"unused-{i}") for i in range(1, 92))

# VOC class -> COCO id (WILSON make_cocovoc.py), used to read VOC masks in COCO ids.
VOC_TO_COCO: dict[int, int] = {
    0: 0, 1: 5, 2: 2, 3: 16, 4: 9, 5: 44, 6: 6, 7: 3, 8: 17, 9: 62, 10: 21, 11: 67, 12: 18,
    13: 19, 14: 4, 15: 1, 16: 64, 17: 20, 18: 63, 19: 7, 20: 72,
}



def voc_to_coco_lut() -> np.ndarray:
    """uint8[256] lookup table VOC label -> COCO id (255 stays 255; other values 255 too)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for voc, coco in VOC_TO_COCO.items():
        lut[voc] = coco
    return lut


# COCO-to-VOC (WILSON's ``tasks.py``): step 0 learns the 60 COCO classes that are not VOC's on COCO
# images, step 1 the 20 VOC classes on VOC images.
VOC_BASE = (
    [8, 10, 11, 13, 14, 15, 22, 23, 24, 25, 27, 28]
    + list(range(31, 44))
    + list(range(46, 62))
    + [65, 70]
    + list(range(73, 83))
    + list(range(84, 91))
)
VOC_NEW = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]
TASKS = {
    "coco-voc": TaskDef(
        steps=(tuple([0] + VOC_BASE), tuple(VOC_NEW)),
        rules=("no-later", "all"),  # tasks.RULE_NO_LATER, tasks.RULE_ALL
        step_datasets=("coco", "voc"),
    ),
}
STANDARD_TASKS = ("coco-voc",)
EXPECTED_COUNTS = {"train": 118287, "val": 5000}


class COCOLayout(SubdirLayout):
    """COCO 2017 with COCO-Stuff thing maps converted to PNGs of thing ids (WILSON's
    ``coco/make_annotation.py``).

    ``split/<split>.txt``, when present, lists the ids instead of the annotation files."""

    dataset = "coco"
    expected_counts = EXPECTED_COUNTS
    SUBDIRS = {"train": "train2017", "val": "val2017"}
    IDS_DIR = "annotations"
    IDS_EXT = ".png"

    def _listed(self, split: str) -> Path:
        return self.root / "split" / f"{split}.txt"

    def _no_ids(self, split: str) -> str:
        return f"no split/{split}.txt and {super()._no_ids(split)}"

    def list_source(self, split: str) -> str:
        check_split(split)
        listed = self._listed(split)
        return str(listed) if listed.is_file() else super().list_source(split)

    def _load_ids(self, split: str) -> list[str]:
        listed = self._listed(split)
        if listed.is_file():
            return [line.split()[0] for line in read_lines(listed)]
        return super()._load_ids(split)


INFO = DatasetInfo(
    name="coco",
    class_names=CLASS_NAMES,
    palette=bit_palette(),
    layout=COCOLayout,  # called as (root, label_space)
    foreground=None,  # only the named task coco-voc
    standard_tasks=STANDARD_TASKS,
    tasks=TASKS,
    preset="coco",
    recipe={},
    step_recipe={"lr": 1e-3},
    expected_counts=EXPECTED_COUNTS,
    help="COCO 2017 with COCO-Stuff thing PNGs (images/, annotations/{train2017,val2017}/)",
)

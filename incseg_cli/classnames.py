"""Label spaces of the built-in datasets, indexed by the label id stored in masks.

Thin re-exports: each dataset's names live in its module of ``incseg_cli.datasets`` (the
registry also knows datasets of one's own; use ``datasets.get(name).class_names``).
"""

from __future__ import annotations

from incseg_cli.datasets import ade as _ade
from incseg_cli.datasets import coco as _coco
from incseg_cli.datasets import voc as _voc
from incseg_cli.datasets.base import IGNORE_INDEX

VOC: list[str] = list(_voc.CLASS_NAMES)
COCO: list[str] = list(_coco.CLASS_NAMES)
ADE: list[str] = list(_ade.CLASS_NAMES)
COCO_THINGS = _coco.THINGS
VOC_TO_COCO = _coco.VOC_TO_COCO

LABEL_SPACES: dict[str, list[str]] = {"voc": VOC, "coco": COCO, "ade": ADE}

__all__ = ["VOC", "COCO", "ADE", "COCO_THINGS", "VOC_TO_COCO", "LABEL_SPACES", "IGNORE_INDEX"]

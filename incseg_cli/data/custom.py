"""``incseg init-dataset``: describe a folder of images and masks as a dataset of one's own.

The scan reads every mask once and records what it finds (the class ids present, pixels
and images per class, image sizes, images without a mask and masks without an image); the
description it writes (``ROOT/incseg-dataset.json``, format in
``incseg_cli/datasets/custom.py``) names the classes ``class-1``, ``class-2``, ... for the
user to rename, and gives them the VOC colours to edit.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from incseg_cli.data.splits import map_ids
from incseg_cli.config import option, validate
from incseg_cli.datasets import DESCRIPTION_FILE
from incseg_cli.datasets.base import IGNORE_INDEX, bit_palette
from incseg_cli.datasets.custom import FORMAT, NAME_RE, VERSION, image_index, mask_index, preset_for_sizes, info_from_description
from incseg_cli.datasets.layout import image_size, read_label_png
from incseg_cli.errors import InputError, OutputExistsError, UsageError
from incseg_cli.fileio import check_writable, write_text
from incseg_cli.presets import pool_workers_option, workers_or_default

IMAGE_DIRS = ("images", "JPEGImages", "img", "imgs")
MASK_DIRS = ("masks", "labels", "annotations", "SegmentationClass", "SegmentationClassAug")
LIST_FILES = {"train": ("train.txt",), "val": ("val.txt",)}
FIRST = 5
# A class id in fewer pixels than this in all the masks together is reported as probable
# noise: a stray value (a resampled edge, a paint slip), not a class one could learn.
NOISE_PIXELS = 50


class _Folder:
    """Picklable pair of folders for ``map_ids``: id -> image file and mask file."""

    def __init__(self, images: dict[str, Path], masks: dict[str, Path]) -> None:
        self.images = images
        self.masks = masks

    def mask_path(self, image_id: str) -> Path:
        return self.masks[image_id]


def _scan_one(folder: _Folder, _split: str, image_id: str) -> tuple[str | None, Any]:
    """(problem or None, (pixel counts per value, (width, height)))."""
    try:
        mask = read_label_png(folder.mask_path(image_id))
        width, height = image_size(folder.images[image_id])
    except InputError as err:
        return str(err), None
    if mask.shape != (height, width):
        return f"{folder.mask_path(image_id)}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}", None
    return None, (np.bincount(mask.ravel(), minlength=256), (width, height))


def _pick(root: Path, given: str | None, candidates: tuple[str, ...], what: str) -> Path:
    if given is not None:
        path = root / given
        if not path.is_dir():
            raise InputError(f"{root}: no {given}/ directory ({what})")
        return path
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise InputError(f"{root}: no {what} folder (looked for {', '.join(c + '/' for c in candidates)}; "
                     f"name yours with --{what})")


def default_name(root: Path) -> str:
    """A dataset name from the root's folder name (characters a name may not hold become -)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name).strip("-.") or "mydata"
    return name[:64]


def scan_folder(root: str | os.PathLike, images: str | None = None, masks: str | None = None,
                ignore: int = IGNORE_INDEX, workers: int = 1) -> dict[str, Any]:
    """What the folder holds: the image and mask folders, the ids with both, and what the
    masks contain (``found`` of the description: with ``probable_noise``, the class ids in
    fewer than ``NOISE_PIXELS`` pixels and the masks that hold them)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: {'is not a directory' if root.exists() else 'does not exist'}")
    images_dir = _pick(root, images, IMAGE_DIRS, "images")
    masks_dir = _pick(root, masks, MASK_DIRS, "masks")
    image_files = image_index(images_dir)
    masks = mask_index(masks_dir)
    mask_ids = sorted(masks)
    ids = [i for i in mask_ids if i in image_files]
    if not ids:
        raise InputError(f"{root}: no image in {images_dir.name}/ has a mask <id>.png in {masks_dir.name}/")
    folder = _Folder({i: image_files[i] for i in ids}, {i: masks[i] for i in ids})
    totals = np.zeros(256, dtype=np.int64)
    per_image = np.zeros(256, dtype=np.int64)
    sizes: dict[tuple[int, int], int] = {}
    problems: list[str] = []
    holders: dict[int, list[str]] = {}  # value -> the first masks that hold it
    for image_id, (problem, result) in map_ids(folder, "all", ids, _scan_one, workers, "reading masks"):
        if problem is not None:
            problems.append(problem)
            continue
        counts, size = result
        totals += counts
        per_image += counts > 0
        sizes[size] = sizes.get(size, 0) + 1
        for v in np.flatnonzero(counts):
            if len(holders.setdefault(int(v), [])) < FIRST:
                holders[int(v)].append(str(folder.mask_path(image_id)))
    if len(problems) == len(ids):
        raise InputError(f"{root}: no mask could be used; the first: {problems[0]}")
    values = [int(v) for v in np.flatnonzero(totals) if v != ignore and v != IGNORE_INDEX]
    widths = [w for w, _ in sizes]
    heights = [h for _, h in sizes]
    found = {
        "images": len(ids) - len(problems),  # the usable pairs
        "images_without_mask": sorted(set(image_files) - set(mask_ids))[:FIRST],
        "images_without_mask_count": len(set(image_files) - set(mask_ids)),
        "masks_without_image_count": len(set(mask_ids) - set(image_files)),
        "unreadable_or_mismatched": problems[:FIRST],
        "unreadable_or_mismatched_count": len(problems),
        "sizes": {"distinct": len(sizes), "min": [min(widths, default=0), min(heights, default=0)],
                  "max": [max(widths, default=0), max(heights, default=0)],
                  "most_common": list(max(sizes, key=sizes.get)) if sizes else None},
        "class_ids_present": values,
        "pixels": {str(v): int(totals[v]) for v in values},
        "images_per_class": {str(v): int(per_image[v]) for v in values},
        "ignore_pixels": int(totals[ignore]) + (int(totals[IGNORE_INDEX]) if ignore != IGNORE_INDEX else 0),
        "probable_noise": {str(v): {"pixels": int(totals[v]), "masks": holders[v]}
                           for v in values if v != 0 and totals[v] < NOISE_PIXELS},
    }
    return {"root": root, "images_dir": images_dir, "masks_dir": masks_dir, "ids": ids, "found": found,
            "holders": holders}


def check_max_class(scan: dict[str, Any], max_class: int) -> None:
    """Class ids above ``max_class`` (``--max-class``) are an error naming the masks that hold
    them: one stray pixel must not turn 20 classes into 241."""
    above = [v for v in scan["found"]["class_ids_present"] if v > max_class]
    if above:
        masks = list(dict.fromkeys(m for v in above for m in scan["holders"][v]))
        pixels = scan["found"]["pixels"]
        values = ", ".join(f"{v} ({pixels[str(v)]:,} px)" for v in above[:FIRST])
        more = f" and {len(above) - FIRST} more" if len(above) > FIRST else ""
        raise InputError(f"{scan['root']}: masks hold class ids above --max-class {max_class}: {values}{more}; "
                         f"in {', '.join(masks[:FIRST])}{' ...' if len(masks) > FIRST else ''}: fix those masks "
                         "(or raise --max-class)")


def compact_json(value: Any, indent: int = 2, level: int = 0) -> str:
    """JSON for people to edit: objects one key a line, and a list of numbers or strings (a
    colour, the class names, a step's classes) on one line."""
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {compact_json(v, indent, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and not all(isinstance(v, (int, float, str, bool)) or v is None for v in value):
        items = [f"{inner}{compact_json(v, indent, level + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def describe_folder(scan: dict[str, Any], name: str, ignore: int = IGNORE_INDEX,
                    val_fraction: float = 0.2) -> dict[str, Any]:
    """The description of a scanned folder: classes 0..(highest id found), list files when
    the root has train.txt / val.txt, else the hash rule."""
    root: Path = scan["root"]
    found = scan["found"]
    top = max(found["class_ids_present"], default=0)
    if top >= ignore:
        raise UsageError(f"{root}: masks hold class id {top}, not below the ignore value {ignore}; give --ignore")
    num = max(top + 1, 2)
    classes = ["background"] + [f"class-{i}" for i in range(1, num)]
    d: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": name,
        "comment": "Written by `incseg init-dataset` from what the masks hold: rename the classes (index = the "
                   "value in the masks, 0 = background), edit the colours, then run `incseg check-data --data "
                   f"{root}`. tasks: {{\"NAME\": [[classes of step 0], [classes of step 1], ...]}}.",
        "classes": classes,
        "palette": bit_palette()[:num].tolist(),
        "ignore": ignore,
        "images": scan["images_dir"].name,
        "masks": scan["masks_dir"].name,
    }
    lists = {s: next((f for f in LIST_FILES[s] if (root / f).is_file()), None) for s in ("train", "val")}
    if lists["train"] or lists["val"]:
        d.update({s: f for s, f in lists.items() if f})
    else:
        d.update(val_fraction=val_fraction, split_seed=0)
    d["tasks"] = {}
    d["preset"] = preset_for_sizes(found)  # written out, so that the user sees and can change it
    d["found"] = found
    return d


@dataclass(kw_only=True)
class InitDatasetOptions:
    """What ``incseg init-dataset`` takes."""

    root: Path = option(required=True, argument=True, metavar="ROOT",
                        help="Folder holding images/ and masks/ (one PNG of class ids per image).")
    name: Optional[str] = option(help="Dataset name (runs/ and splits/ use it). [default: the folder's name]")
    images: Optional[str] = option(metavar="DIR",
                                   help="Image folder under ROOT. [default: images/, JPEGImages/, img/ or imgs/]")
    masks: Optional[str] = option(metavar="DIR", help="Mask folder under ROOT. [default: masks/, labels/, "
                                                      "annotations/ or SegmentationClass(Aug)/]")
    ignore: int = option(IGNORE_INDEX, help="Mask value of void pixels (read as 255).")
    val_fraction: float = option(0.2, help="Without ROOT/train.txt and val.txt: the share of images in val "
                                           "(picked by a hash of the id).")
    max_class: Optional[int] = option(metavar="N", help="The highest class id the masks may hold: a mask with a "
                                      "higher one is an error naming it (a stray value would otherwise add "
                                      "classes). [no bound below --ignore]")
    workers: Optional[int] = pool_workers_option("read masks")
    force: bool = option(False, flag="--force", help="Write the description again over an existing one.")


def describe_dataset(options: InitDatasetOptions) -> dict[str, Any]:
    """``incseg init-dataset``: ``init_dataset`` with the command's options."""
    o = validate(options)
    return init_dataset(o.root, name=o.name, images=o.images, masks=o.masks, ignore=o.ignore,
                        val_fraction=o.val_fraction, force=o.force, workers=workers_or_default(o.workers),
                        max_class=o.max_class)


def init_dataset(root: str | os.PathLike, name: str | None = None, images: str | None = None,
                 masks: str | None = None, ignore: int = IGNORE_INDEX, val_fraction: float = 0.2,
                 force: bool = False, workers: int = 1, max_class: int | None = None) -> dict[str, Any]:
    """Scan ``root`` and write ``root/incseg-dataset.json`` atomically (refused when it
    exists, unless ``force``); returns the description written. ``max_class``: the highest
    class id the masks may hold (an InputError naming the masks otherwise)."""
    root = Path(root)
    path = root / DESCRIPTION_FILE
    if not 0 < ignore <= 255:
        raise UsageError(f"--ignore must be a mask value 1..255, got {ignore}")
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    if max_class is not None and not 1 <= max_class < ignore:
        raise UsageError(f"--max-class must be a class id from 1 to {ignore - 1} (below --ignore {ignore}), "
                         f"got {max_class}")
    name = name or default_name(root)
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"--name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists (it may hold your edits); pass --force to write it again")
    check_writable(path, "ROOT")
    scan = scan_folder(root, images, masks, ignore, workers)
    if max_class is not None:
        check_max_class(scan, max_class)
    description = describe_folder(scan, name, ignore, val_fraction)
    info_from_description(description, str(path), root)  # what is written must load
    write_text(path, compact_json(description) + "\n")
    return description

"""``incseg check-data``: is a dataset root usable, and if not, what exactly is missing?

Errors (the root cannot be used): a missing directory or image list, listed images or masks
that are not on disk or are empty (0 bytes), two files of one id (a.jpg and a.png), and with
``--deep`` masks that cannot be read, differ in size from their image or hold values outside
the label space. Warnings (the root is usable): fewer or more images than the full dataset
(the toy dataset and subsets are legitimate), duplicate ids, images in both train and val.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from incseg_cli import datasets, presets
from incseg_cli.config import option, validate
from incseg_cli.datasets import open_layout
from incseg_cli.datasets.layout import classes_present, DatasetLayout, image_size, invalid_values
from incseg_cli.data.splits import map_ids
from incseg_cli.errors import InputError

FIRST = 5  # how many offending names a message or report lists


@dataclass(kw_only=True)
class CheckDataOptions:
    """What ``incseg check-data`` takes."""

    data: Path = option(required=True, old_positional=True,
                        help="Dataset root (e.g. VOCdevkit/VOC2012, ADEChallengeData2016, coco, or a folder with "
                             "incseg-dataset.json).")
    dataset: Optional[str] = datasets.dataset_option()
    deep: bool = option(False, flag="--deep", help="Also open every mask and check its size and label values "
                                                   "(slow, parallel).")
    workers: Optional[int] = presets.pool_workers_option("read masks")


def check_dataset(options: CheckDataOptions) -> dict[str, Any]:
    """``incseg check-data``: the report of ``check_data`` on the dataset ``options`` name (or
    the root describes); an unreadable description is a finding of the check, not an error."""
    o = validate(options)
    try:
        dataset = datasets.resolve(o.dataset, o.data)
    except InputError as err:
        return {"root": str(o.data), "dataset": o.dataset or "custom", "usable": False, "deep": o.deep,
                "errors": [str(err)], "warnings": [], "splits": {}}
    return check_data(o.data, dataset=dataset, deep=o.deep, workers=presets.workers_or_default(o.workers))


def _names(items: list[str]) -> str:
    more = f", ... ({len(items) - FIRST} more)" if len(items) > FIRST else ""
    return ", ".join(items[:FIRST]) + more


def _deep_one(layout: DatasetLayout, split: str, image_id: str) -> tuple[str | None, list[int]]:
    """(problem or None, classes present) for one image/mask pair."""
    try:
        mask = layout.read_mask(split, image_id)
        width, height = image_size(layout.image_path(split, image_id))
    except InputError as err:
        return str(err), []
    path = layout.mask_path(split, image_id)
    if mask.shape != (height, width):
        return f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}", []
    bad = invalid_values(mask, layout.valid_labels)
    if bad:
        return (
            f"{path}: mask values {', '.join(map(str, bad[:5]))} are not {layout.label_space} labels "
            f"(0..{len(layout.class_names) - 1} or 255)",
            [],
        )
    return None, classes_present(mask)


def _check_split(layout: DatasetLayout, split: str, deep: bool, workers: int, report: dict) -> None:
    errors: list[str] = report["errors"]
    warnings: list[str] = report["warnings"]
    entry: dict[str, Any] = {}
    report["splits"][split] = entry
    try:
        ids = layout.ids(split)
    except InputError as err:
        entry["list"] = None
        errors.append(_strip_root(str(err), layout.root))
        return
    entry["list"] = layout.list_source(split)
    entry["ids"] = len(ids)
    expected = layout.expected_counts.get(split)
    entry["expected"] = expected
    if not ids:
        errors.append(f"{split}: the image list {entry['list']} is empty")
        return
    unique = list(dict.fromkeys(ids))
    if len(unique) != len(ids):
        entry["duplicates"] = len(ids) - len(unique)
        warnings.append(f"{split}: {len(ids) - len(unique)} ids are listed twice")
    try:
        missing_images = [i for i in unique if not layout.image_path(split, i).is_file()]
        missing_masks = [i for i in unique if not layout.mask_path(split, i).is_file()]
    except InputError as err:  # a folder that names one id twice (a.jpg and a.png)
        errors.append(_strip_root(str(err), layout.root))
        return
    entry["missing_images"] = len(missing_images)
    entry["missing_masks"] = len(missing_masks)
    entry["first_missing_images"] = [str(layout.image_path(split, i)) for i in missing_images[:FIRST]]
    entry["first_missing_masks"] = [str(layout.mask_path(split, i)) for i in missing_masks[:FIRST]]
    if missing_images:
        errors.append(
            f"{split}: {len(missing_images)} of {len(unique)} listed images are missing "
            f"(first: {_names([_rel(layout.image_path(split, i), layout.root) for i in missing_images])})"
        )
    if missing_masks:
        errors.append(
            f"{split}: {len(missing_masks)} of {len(unique)} listed images have no mask "
            f"(first: {_names([_rel(layout.mask_path(split, i), layout.root) for i in missing_masks])})"
        )
    # Empty files: training would meet them only when it reads them, if ever (the last
    # batch's remainder is dropped).
    absent = set(missing_images) | set(missing_masks)
    empty = [_rel(path, layout.root) for i in unique if i not in absent
             for path in (layout.image_path(split, i), layout.mask_path(split, i)) if _empty(path)]
    entry["empty_files"] = len(empty)
    if empty:
        errors.append(f"{split}: {len(empty)} listed files are empty, 0 bytes (first: {_names(empty)})")
    if expected is not None and len(unique) != expected:
        relation = "fewer" if len(unique) < expected else "more"
        warnings.append(
            f"{split}: {len(unique):,} images listed, {relation} than the {expected:,} of the full "
            f"{layout.dataset} {split} set (fine for a subset or the toy dataset)"
        )
    if deep and not missing_images and not missing_masks:
        problems: list[str] = []
        per_class: dict[int, int] = {}
        for _, (problem, classes) in map_ids(
            layout, split, unique, _deep_one, workers, f"checking {split} masks"
        ):
            if problem is not None:
                problems.append(problem)
            for c in classes:
                per_class[c] = per_class.get(c, 0) + 1
        entry["deep"] = {
            "checked": len(unique),
            "bad": len(problems),
            "first_problems": problems[:FIRST],
            "images_per_class": {str(c): per_class[c] for c in sorted(per_class)},
        }
        if problems:
            errors.append(
                f"{split}: {len(problems)} of {len(unique)} masks are invalid (first: {problems[0]})"
            )
        absent = [
            f"{c} ({layout.class_names[c]})"
            for c in range(1, len(layout.class_names))
            if c not in per_class and not layout.class_names[c].startswith("unused-")
        ]
        if absent and layout.dataset == layout.label_space:
            warnings.append(f"{split}: no image contains class(es) {_names(absent)}")


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _strip_root(message: str, root: Path) -> str:
    prefix = f"{root}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def check_data(
    root: str | os.PathLike, dataset: str = "voc", deep: bool = False, workers: int = 2
) -> dict[str, Any]:
    """Check a dataset root; return a report (``usable``, ``errors``, ``warnings``, per split)."""
    root = Path(root)
    report: dict[str, Any] = {
        "root": str(root),
        "dataset": dataset,
        "usable": False,
        "deep": deep,
        "errors": [],
        "warnings": [],
        "splits": {},
    }
    try:
        layout = open_layout(dataset, root)
    except InputError as err:
        report["errors"].append(_strip_root(str(err), root))
        return report
    try:  # a description's preset must be one incseg has
        presets.default_preset(dataset)
    except InputError as err:
        report["errors"].append(str(err))
    report["classes"] = len(layout.class_names)
    report["class_names"] = {str(c): name for c, name in enumerate(layout.class_names)}
    for split in ("train", "val"):
        _check_split(layout, split, deep, workers, report)
    train = report["splits"].get("train", {})
    val = report["splits"].get("val", {})
    if train.get("ids") and val.get("ids"):
        both = set(layout.ids("train")) & set(layout.ids("val"))
        if both:
            report["warnings"].append(
                f"{len(both)} images are in both train and val (first: {_names(sorted(both))})"
            )
    report["errors"] = list(dict.fromkeys(report["errors"]))  # a folder's problem, found by both splits
    report["usable"] = not report["errors"]
    return report


def failure_message(report: dict[str, Any]) -> str:
    """One line naming what is wrong with the root of a failed report."""
    errors = report["errors"]
    shown = "; ".join(errors[:3])
    more = f"; and {len(errors) - 3} more problems (see --json)" if len(errors) > 3 else ""
    return f"{report['root']}: not a usable {report['dataset']} root: {shown}{more}"

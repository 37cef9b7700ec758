"""Commands that look at datasets: init-dataset, check-data and prepare-splits.

Their options are declared beside the library functions they call (``data/custom.py``,
``data/check.py``, ``data/splits.py``), which the Python API calls too.
"""

from __future__ import annotations

import json

from incseg_cli import console
from incseg_cli.cli.app import app
from incseg_cli.cli.options import json_option
from incseg_cli.cli.declared import Parsed, declared_command
from incseg_cli.data.check import CheckDataOptions, check_dataset, failure_message
from incseg_cli.data.custom import NOISE_PIXELS, InitDatasetOptions, describe_dataset
from incseg_cli.data.splits import PrepareSplitsOptions, prepare_task_splits
from incseg_cli.errors import InputError

@declared_command(app, "init-dataset", [(None, InitDatasetOptions)], extra=[json_option("the description written")],
                  recipe=False)
def init_dataset_cmd(parsed: Parsed) -> None:
    """Describe a folder of images and masks as a dataset of your own: write ROOT/incseg-dataset.json.

    Reads every mask and records what it finds (classes present, pixels and images per class, image sizes, images without a mask); a class id in fewer than 50 pixels of all the masks is reported as probable noise, and --max-class makes a higher id an error. The classes are named class-1, class-2, ... for you to rename (index = the value in the masks, 0 = background); add colours and tasks by class name, then check it with check-data. An existing description is kept unless --force. docs/own-data.md.

    **Examples**

    ```
    incseg init-dataset data/defects --name defects
    incseg check-data --data data/defects --deep
    incseg prepare-splits --data data/defects --task 3-2-ov
    ```
    """
    options = parsed.build(InitDatasetOptions)
    root = options.root
    description = describe_dataset(options)
    found = description["found"]
    console.log(
        f"wrote {root / 'incseg-dataset.json'}: dataset {description['name']}, {found['images']:,} images, "
        f"{len(description['classes'])} classes (ids {', '.join(map(str, found['class_ids_present']))} present); "
        "rename the classes there"
    )
    sizes = found["sizes"]["most_common"]
    console.log(f"preset {description['preset']}: the default recipe of every stage on it (images mostly "
                f"{sizes[0]}x{sizes[1]} px; toy up to a shorter side of 160 px, voc above; change \"preset\" there "
                "or pass --preset)" if sizes else f"preset {description['preset']}")
    for key, what in (("images_without_mask_count", "images have no mask"),
                      ("masks_without_image_count", "masks have no image"),
                      ("unreadable_or_mismatched_count", "masks are unreadable or differ in size from their image")):
        if found[key]:
            left = ("fix or remove them: check-data refuses a root with such masks"
                    if key == "unreadable_or_mismatched_count" else "left out")
            console.warn(f"{found[key]} {what} ({left})")
    noise = found.get("probable_noise") or {}
    if noise:
        ids = ", ".join(f"{v} ({n['pixels']} px, in {', '.join(n['masks'][:2])})" for v, n in list(noise.items())[:5])
        console.warn(f"class id(s) in fewer than {NOISE_PIXELS} pixels of all the masks, probably noise: {ids}; "
                     "fix those masks, or bound the classes with --max-class")
    if parsed.extra["json_out"]:
        print(json.dumps(description, indent=2))


@declared_command(app, "check-data", [(None, CheckDataOptions)],
                  extra=[json_option("the report as one JSON document")], recipe=False)
def check_data_cmd(parsed: Parsed) -> None:
    """Check that DATA is a usable dataset root and name exactly what is missing.

    Checks the directories, the image lists (VOC: train_aug.txt and val.txt in ImageSets/Segmentation/, list/ or splits/; a dataset of your own: its description), that every listed image and mask exists, and compares the counts with the full dataset (fewer is a warning: subsets and the toy dataset are fine).

    Exit 0 when usable, 3 otherwise (one line on stderr names the problems; --json lists them all).

    **Examples**

    ```
    incseg check-data --data data/VOC2012
    incseg check-data --data data/ADEChallengeData2016 --dataset ade --deep
    incseg check-data --data data/defects --deep --json
    ```
    """
    options = parsed.build(CheckDataOptions)
    report = check_dataset(options)
    if parsed.extra["json_out"]:
        print(json.dumps(report, indent=2))
    if not report["usable"]:
        raise InputError(failure_message(report))
    if not parsed.extra["json_out"]:
        for warning in report["warnings"]:
            console.warn(warning)
        parts = []
        for split, entry in report["splits"].items():
            parts.append(f"{split} {entry.get('ids', 0):,} images ({entry.get('list')})")
        checked = ", masks checked" if options.deep else ""
        console.log(f"ok: {options.data} is a usable {report['dataset']} root: {'; '.join(parts)}{checked}")


def _summary_table(results: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="training images per step")
    for col in ("task", "steps", "images per step", "val"):
        table.add_column(col)
    for r in results:
        table.add_row(r["task"], str(len(r["counts"])), " / ".join(f"{c:,}" for c in r["counts"]), f"{r['val']:,}")
    console.stderr.print(table)


@declared_command(app, "prepare-splits", [(None, PrepareSplitsOptions)],
                  extra=[json_option("a JSON summary")], recipe=False)
def prepare_splits_cmd(parsed: Parsed) -> None:
    """Compute the training images of every step of a task and write the split files.

    A step's images are those containing at least one of its classes (-ov, overlapped); without -ov (disjoint) they must also contain no class of a later step. val.txt lists the whole val set; which of its images a step is scored on is the training stages' --val-set (docs/evaluation.md).

    Writes OUT/DATASET/TASK/{task.json, train-T.txt, val.txt} and OUT/DATASET/labels-train.tsv (the per-image classes used). The class sets come from scanning the masks of --data, or from a label table (--labels).

    **Examples**

    ```
    incseg prepare-splits --data data/VOC2012 --task 15-5 --task 15-5-ov --out splits
    incseg prepare-splits --data data/defects --task 3-2-ov --task tasks/by-severity.json
    incseg prepare-splits --dataset voc --labels labels-train.tsv --val-labels labels-val.tsv
    ```
    """
    summary = prepare_task_splits(parsed.build(PrepareSplitsOptions))
    _summary_table(summary["tasks"])
    console.log(f"wrote {len(summary['tasks'])} task(s) under {summary['out']}/{summary['dataset']}")
    if parsed.extra["json_out"]:
        print(json.dumps(summary, indent=2))

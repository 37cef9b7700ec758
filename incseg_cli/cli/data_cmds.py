"""Commands that look at datasets: init-dataset, check-data and prepare-splits.

Heavy modules (torch through fileio, numpy, PIL) are imported inside the commands so that
``incseg --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from incseg_cli.cli.app import app
from incseg_cli.errors import InputError, UsageError

DATASET_HELP = ("Dataset: voc, coco, ade, or the name of a dataset of your own (described by DATA/incseg-dataset.json, "
                "docs/own-data.md). [default: the dataset DATA describes, else voc]")
DATASET_METAVAR = "[voc|coco|ade|NAME]"
WORKERS_HELP = "Processes that read masks. [default: the CPUs of this process, at most 8]"


def complete_dataset(incomplete: str) -> list[str]:
    """Shell completion of --dataset: the registered datasets."""
    from incseg_cli import datasets

    return [n for n in datasets.names() if n.startswith(incomplete)]


def resolve_workers(workers: Optional[int]) -> int:
    """``--workers`` of the commands that read masks in a process pool: the one default of
    every command (``presets.workers_or_default``), and at least one process."""
    from incseg_cli.presets import workers_or_default

    workers = workers_or_default(workers)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    return workers


def positional_or_option(positional: Optional[Path], option: Optional[Path], name: str, command: str) -> Path:
    """The value of ``--NAME``, or of the old positional argument with a one-line note."""
    from incseg_cli import console

    if positional is not None:
        if option is not None and Path(option) != Path(positional):
            raise UsageError(f"give the {name.upper()} once: --{name} {option} or {positional}, not both")
        console.warn(f"`incseg {command} {positional}` is now `incseg {command} --{name} {positional}`")
        return positional
    if option is None:
        raise UsageError(f"give --{name} {name.upper()}")
    return option


@app.command("init-dataset")
def init_dataset_cmd(
    root: Path = typer.Argument(..., help="Folder holding images/ and masks/ (one PNG of class ids per image).",
                                show_default=False),
    name: Optional[str] = typer.Option(None, "--name", help="Dataset name (runs/ and splits/ use it). "
                                       "[default: the folder's name]", show_default=False),
    images: Optional[str] = typer.Option(None, "--images", metavar="DIR", show_default=False,
                                         help="Image folder under ROOT. [default: images/, JPEGImages/, img/ or imgs/]"),
    masks: Optional[str] = typer.Option(None, "--masks", metavar="DIR", show_default=False,
                                        help="Mask folder under ROOT. [default: masks/, labels/, annotations/ or "
                                             "SegmentationClass(Aug)/]"),
    ignore: int = typer.Option(255, "--ignore", help="Mask value of void pixels (read as 255)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction",
                                       help="Without ROOT/train.txt and val.txt: the share of images in val "
                                            "(picked by a hash of the id)."),
    max_class: Optional[int] = typer.Option(None, "--max-class", metavar="N", show_default=False,
                                            help="The highest class id the masks may hold: a mask with a higher "
                                                 "one is an error naming it (a stray value would otherwise add "
                                                 "classes). [no bound below --ignore]"),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP, show_default=False),
    force: bool = typer.Option(False, "--force", help="Write the description again over an existing one."),
    as_json: bool = typer.Option(False, "--json", help="Print the description written on stdout."),
) -> None:
    """Describe a folder of images and masks as a dataset of your own: write ROOT/incseg-dataset.json.

    Reads every mask and records what it finds (classes present, pixels and images per class, image sizes, images without a mask); a class id in fewer than 50 pixels of all the masks is reported as probable noise, and --max-class makes a higher id an error. The classes are named class-1, class-2, ... for you to rename (index = the value in the masks, 0 = background); add colours and tasks by class name, then check it with check-data. An existing description is kept unless --force. docs/own-data.md.

    **Examples**

    ```
    incseg init-dataset data/defects --name defects
    incseg check-data --data data/defects --deep
    incseg prepare-splits --data data/defects --task 3-2-ov
    ```
    """
    from incseg_cli import console
    from incseg_cli.data.custom import init_dataset

    from incseg_cli.data.custom import NOISE_PIXELS

    description = init_dataset(root, name=name, images=images, masks=masks, ignore=ignore,
                               val_fraction=val_fraction, force=force, workers=resolve_workers(workers),
                               max_class=max_class)
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
    if as_json:
        print(json.dumps(description, indent=2))


@app.command("check-data")
def check_data_cmd(
    root: Optional[Path] = typer.Argument(None, hidden=True, show_default=False),
    data: Optional[Path] = typer.Option(None, "--data", show_default=False,
                                        help="Dataset root (e.g. VOCdevkit/VOC2012, ADEChallengeData2016, coco, or a "
                                             "folder with incseg-dataset.json). [required]"),
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar=DATASET_METAVAR, help=DATASET_HELP,
                                          show_default=False, autocompletion=complete_dataset),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout."),
    deep: bool = typer.Option(False, "--deep",
                              help="Also open every mask and check its size and label values (slow, parallel)."),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP, show_default=False),
) -> None:
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
    from incseg_cli import console, datasets
    from incseg_cli.data.check import check_data, failure_message

    data = positional_or_option(root, data, "data", "check-data")
    workers = resolve_workers(workers)
    try:
        dataset = datasets.resolve(dataset, data)
    except InputError as err:  # an unreadable description is a finding of the check
        report = {"root": str(data), "dataset": dataset or "custom", "usable": False, "deep": deep,
                  "errors": [str(err)], "warnings": [], "splits": {}}
    else:
        report = check_data(data, dataset=dataset, deep=deep, workers=workers)
    if as_json:
        print(json.dumps(report, indent=2))
    if not report["usable"]:
        raise InputError(failure_message(report))
    if not as_json:
        for warning in report["warnings"]:
            console.warn(warning)
        parts = []
        for split, entry in report["splits"].items():
            parts.append(f"{split} {entry.get('ids', 0):,} images ({entry.get('list')})")
        checked = ", masks checked" if deep else ""
        console.log(f"ok: {data} is a usable {dataset} root: {'; '.join(parts)}{checked}")


def _summary_table(results: list[dict]) -> None:
    from rich.table import Table

    from incseg_cli import console

    table = Table(title="training images per step")
    for col in ("task", "steps", "images per step", "val"):
        table.add_column(col)
    for r in results:
        table.add_row(r["task"], str(len(r["counts"])), " / ".join(f"{c:,}" for c in r["counts"]), f"{r['val']:,}")
    console.stderr.print(table)


@app.command("prepare-splits")
def prepare_splits_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar=DATASET_METAVAR, help=DATASET_HELP,
                                          show_default=False, autocompletion=complete_dataset),
    tasks: Optional[List[str]] = typer.Option(
        None, "--task", show_default=False,
        help="Task to prepare (repeatable): e.g. 15-5 or 15-5-ov, a task named in the dataset's description, or a "
             "task file TASK.json ({\"name\": ..., \"steps\": [[class names], ...]}). "
             "[default: every standard task of the dataset, disjoint and -ov]"),
    data: Optional[Path] = typer.Option(
        None, "--data", show_default=False,
        help="Dataset root: scan its train masks for the classes of every image, and take the val ids from it."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", show_default=False,
        help="Label table of the train images (lines 'IMAGE_ID TAB 1,15', or class names) instead of scanning masks."),
    val_labels: Optional[Path] = typer.Option(
        None, "--val-labels", show_default=False,
        help="Label table whose ids are the val images (needed with --labels unless --data is given)."),
    voc_data: Optional[Path] = typer.Option(
        None, "--voc-data", show_default=False,
        help="COCO-to-VOC: VOC root whose train masks give the step-1 image classes."),
    voc_labels: Optional[Path] = typer.Option(
        None, "--voc-labels", show_default=False, help="COCO-to-VOC: label table of the VOC train images (VOC ids)."),
    out: Optional[Path] = typer.Option(
        None, "--out", show_default=False,
        help="Output directory; writes OUT/DATASET/TASK/. [$INCSEG_SPLITS, else ./splits if it exists, else "
             "~/.local/share/incseg/splits ($XDG_DATA_HOME): where the training stages look]"),
    workers: Optional[int] = typer.Option(None, "--workers", help=WORKERS_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
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
    from incseg_cli import console, datasets
    from incseg_cli.data.splitroots import writable_splits_root
    from incseg_cli.data.splits import prepare_splits

    dataset = datasets.resolve(dataset, data)
    out = out if out is not None else writable_splits_root()
    results = prepare_splits(dataset, tasks, out, data=data, labels=labels, val_labels=val_labels,
                             voc_data=voc_data, voc_labels=voc_labels, workers=resolve_workers(workers))
    _summary_table(results)
    console.log(f"wrote {len(results)} task(s) under {out / dataset}")
    if as_json:
        print(json.dumps({"out": str(out), "dataset": dataset, "tasks": results}, indent=2))

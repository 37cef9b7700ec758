"""Commands that look at datasets: check-data and prepare-splits.

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

DATASETS = ("voc", "coco", "ade")


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")


@app.command("check-data")
def check_data_cmd(
    root: Path = typer.Argument(..., help="Dataset root (e.g. VOCdevkit/VOC2012, ADEChallengeData2016, coco)."),
    dataset: str = typer.Option("voc", "--dataset", help="Layout of ROOT: voc, coco or ade.", show_default=True),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON document on stdout. (default: off)"),
    deep: bool = typer.Option(
        False, "--deep", help="Also open every mask and check its size and label values (slow, parallel). (default: off)"
    ),
    workers: int = typer.Option(2, "--workers", help="Processes for --deep.", show_default=True),
) -> None:
    """Check that ROOT is a usable dataset root and name exactly what is missing.

    Checks the directories, the image lists (VOC: train_aug.txt and val.txt in ImageSets/Segmentation/, list/ or splits/), that every listed image and mask exists, and compares the counts with the full dataset (fewer is a warning: subsets and the toy dataset are fine).

    Exit 0 when usable, 3 otherwise (one line on stderr names the problems; --json lists them all).
    """
    from incseg_cli import console
    from incseg_cli.data.check import check_data, failure_message

    _check_dataset(dataset)
    _check_workers(workers)
    report = check_data(root, dataset=dataset, deep=deep, workers=workers)
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
        console.log(f"ok: {root} is a usable {dataset} root: {'; '.join(parts)}{checked}")


def _default_tasks(dataset: str) -> list[str]:
    from incseg_cli.tasks import STANDARD_TASKS

    names = []
    for name in STANDARD_TASKS.get(dataset, []):
        names += [name, f"{name}-ov"]
    return names


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
    dataset: str = typer.Option("voc", "--dataset", help="Dataset: voc, coco or ade.", show_default=True),
    tasks: Optional[List[str]] = typer.Option(
        None,
        "--task",
        help="Task to prepare (repeatable), e.g. 15-5 or 15-5-ov. "
        "(default: every standard task of the dataset, disjoint and -ov)",
        show_default=False,
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="Dataset root: scan its train masks for the classes of every image, and take the val ids from it. (default: none)"
    ),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Label table of the train images (lines 'IMAGE_ID TAB 1,15') instead of scanning masks. (default: none)"
    ),
    val_labels: Optional[Path] = typer.Option(
        None, "--val-labels", help="Label table whose ids are the val images (needed with --labels unless --data is given). (default: none)"
    ),
    voc_data: Optional[Path] = typer.Option(
        None, "--voc-data", help="COCO-to-VOC: VOC root whose train masks give the step-1 image classes. (default: none)"
    ),
    voc_labels: Optional[Path] = typer.Option(
        None, "--voc-labels", help="COCO-to-VOC: label table of the VOC train images (VOC ids). (default: none)"
    ),
    out: Path = typer.Option(Path("splits"), "--out", help="Output directory; writes OUT/DATASET/TASK/.", show_default=True),
    workers: int = typer.Option(2, "--workers", help="Processes that read masks with --data/--voc-data.", show_default=True),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout. (default: off)"),
) -> None:
    """Compute the training images of every step of a task and write the split files.

    A step's images are those containing at least one of its classes (-ov, overlapped); without -ov (disjoint) they must also contain no class of a later step. val.txt lists the whole val set; which of its images a step is scored on is the training stages' --val-set (README: Evaluation protocol).

    Writes OUT/DATASET/TASK/{task.json, train-T.txt, val.txt} and OUT/DATASET/labels-train.tsv (the per-image classes used). The class sets come from scanning the masks of --data, or from a label table (--labels).
    """
    from incseg_cli import console
    from incseg_cli.data.layouts import open_layout
    from incseg_cli.data.splits import read_label_table, scan_masks, summarize, write_splits
    from incseg_cli.tasks import get_task

    _check_dataset(dataset)
    _check_workers(workers)
    names = list(tasks) if tasks else _default_tasks(dataset)
    resolved = []
    for name in names:
        task = get_task(dataset, name)
        if all(t.key != task.key for t in resolved):
            resolved.append(task)
    if labels is None and data is None:
        raise UsageError("give --data ROOT (scan its masks) or --labels TABLE.tsv")
    if val_labels is None and data is None:
        raise UsageError("give --val-labels TABLE.tsv or --data ROOT for the val image ids")
    needs_voc = any("voc" in t.step_datasets and t.dataset != "voc" for t in resolved)
    if needs_voc and voc_labels is None and voc_data is None:
        raise UsageError("COCO-to-VOC step 1 trains on VOC images: give --voc-data VOC_ROOT or --voc-labels TABLE.tsv")
    if (voc_labels is not None or voc_data is not None) and not needs_voc:
        console.warn("--voc-data/--voc-labels are only used by coco-voc tasks; ignored")

    # Validate every input before the slow part (scanning masks).
    layout = open_layout(dataset, data) if data is not None else None
    if layout is not None:
        layout.ids("train") if labels is None else None
        layout.ids("val") if val_labels is None else None
    voc_layout = None
    if needs_voc and voc_labels is None:
        voc_layout = open_layout("voc", voc_data)
        voc_layout.ids("train")
    train_table = read_label_table(labels) if labels is not None else None
    val_ids = list(read_label_table(val_labels)) if val_labels is not None else layout.ids("val")
    voc_table = read_label_table(voc_labels) if needs_voc and voc_labels is not None else None
    if train_table is not None and not train_table:
        raise InputError(f"{labels}: the label table has no rows")
    if not val_ids:
        raise InputError(f"{val_labels or layout.list_source('val')}: no val images")

    if train_table is None:
        console.log(f"scanning the train masks of {data} ({workers} workers)")
        train_table = scan_masks(layout, "train", workers=workers)
    elif layout is not None:
        listed = set(layout.ids("train")) if _has_list(layout, "train") else set(train_table)
        if listed != set(train_table):
            console.warn(f"{labels} and the train list of {data} name different images; using {labels}")
    if needs_voc and voc_table is None:
        console.log(f"scanning the train masks of {voc_data} ({workers} workers)")
        voc_table = scan_masks(voc_layout, "train", workers=workers)

    results = []
    for task in resolved:
        step_classes = {"voc": voc_table} if "voc" in task.step_datasets and task.dataset != "voc" else None
        directory = write_splits(task, train_table, val_ids, out, step_classes=step_classes)
        summary = summarize(directory)
        results.append(summary)
        for step, count in enumerate(summary["counts"]):
            if count == 0:
                console.warn(f"{dataset}/{task.key} step {step} has no training image")
    _summary_table(results)
    console.log(f"wrote {len(results)} task(s) under {out / dataset}")
    if as_json:
        print(json.dumps({"out": str(out), "dataset": dataset, "tasks": results}, indent=2))


def _has_list(layout, split: str) -> bool:
    try:
        layout.ids(split)
        return True
    except InputError:
        return False

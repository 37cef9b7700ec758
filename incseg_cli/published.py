"""The papers' published results, shipped as data (``data/published.json``), and their
comparison with a run's per-class IoU.

Every entry is one row of one table of one source, copied from the papers and repositories
(WILSON's Tables 1-5, PLOP's Table 1, the SSUL and DKD READMEs, MiB's ADE table). ALIFE's own tables
are not shipped. A column names the classes it averages as a
*group* of the task, so that the run's number is computed over exactly the same classes:

- ``base``: the step-0 classes without background (WILSON's "1-15");
- ``base+bg``: the same with background (PLOP's and MiB's "0-15");
- ``added``: every class added after step 0 ("16-20"; 15-1's five steps together);
- ``all``: every class seen, background included;
- ``step:K``: the classes of step K (MiB's per-step ADE columns);
- ``hiou``: DKD's hIoU, the harmonic mean of ``base+bg`` and ``added``;
- ``avg``: PLOP's mean over the steps of "all", which needs the whole chain: not compared.

A column with ``evaluated_on`` other than the run's val data (COCO-to-VOC's COCO columns) is
not compared either.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incseg_cli.reporting import harmonic_iou
from incseg_cli.tasks import Task, get_task

DATA = Path(__file__).resolve().parent / "data" / "published.json"
COMPARED = ("old", "new", "all")  # the columns of the report's text tables (JSON has every one)


@dataclass(frozen=True)
class Column:
    key: str
    group: str
    classes: str
    value: float
    evaluated_on: str | None = None


@dataclass(frozen=True)
class Published:
    source: str
    citation: str
    short: str  # "WILSON (CVPR 2022)": the source in tables
    table: str
    name: str
    method: str
    dataset: str
    task: str
    step: int
    columns: dict[str, Column]
    val_set: str  # the source's val set (docs/evaluation.md)
    supervision: str | None = None
    variant: str | None = None
    note: str | None = None

    @property
    def cite(self) -> str:
        return f"{self.citation}, {self.table}"

    @property
    def short_cite(self) -> str:
        return f"{self.short}, {self.table}" if self.table != "README" else self.short

    @property
    def setting(self) -> str:
        return "overlapped" if self.task.endswith("-ov") else "disjoint"


@functools.lru_cache(maxsize=None)
def load_published(path: str | Path = DATA) -> tuple[Published, ...]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    sources = doc["sources"]
    out = []
    for row in doc["results"]:
        src = sources[row["source"]]
        columns = {k: Column(k, c["group"], c["classes"], float(c["value"]), c.get("evaluated_on"))
                   for k, c in row["columns"].items()}
        out.append(Published(row["source"], src["citation"], src["short"], row["table"], row["name"], row["method"],
                             row["dataset"], row["task"], int(row["step"]), columns, src["val_set"],
                             row.get("supervision"), row.get("variant"), row.get("note")))
    return tuple(out)


def find(method: str, dataset: str, task: str, step: int, variant: str | None = None) -> list[Published]:
    """The published rows of ``method`` on ``dataset``/``task`` (setting included: a ``-ov``
    key is the overlapped setting) after ``step``, in the same variant (None: the main
    result, not an ablation). Joint training is listed under ``offline`` too."""
    return [p for p in load_published() if p.method == method and p.dataset == dataset and p.variant == variant
            and ((p.task == task and p.step == step) or (p.task == "offline" and method == "joint"))]


def group_classes(task: Task, step: int, group: str) -> list[int] | None:
    """The label ids a column group averages at ``step`` of ``task`` (None: not comparable)."""
    groups = task.class_groups(step)
    if group == "base":
        return groups["base"]
    if group == "base+bg":
        return [0] + groups["base"]
    if group == "added":
        return groups["added"]
    if group == "hiou":  # two means, of base+bg and of added (``compare``)
        return [0] + groups["base"] + groups["added"]
    if group == "all":
        return task.seen_classes(step)
    if group.startswith("step:"):
        k = int(group[5:])
        return [c for c in task.new_classes(k) if c != 0] if 0 <= k <= step else None
    return None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def compare(entry: Published, iou_by_label: dict[int, float | None], evaluated_on: str | None = None
            ) -> dict[str, dict[str, Any]]:
    """Per column of ``entry``: the paper's value, the run's over the same classes (IoU in
    [0, 1] per label, classes without ground truth left out as ``evaluate`` does), in %, and
    run − paper. ``evaluated_on`` is the run's val data as the columns name it ("VOC val")."""
    task = get_task(entry.dataset, entry.task)
    out = {}
    for key, col in entry.columns.items():
        if col.group == "hiou":
            old = _mean([iou_by_label.get(c) for c in group_classes(task, entry.step, "base+bg")])
            new = _mean([iou_by_label.get(c) for c in group_classes(task, entry.step, "added")])
            out[key] = _column(col, harmonic_iou(old, new))
            continue
        labels = group_classes(task, entry.step, col.group)
        comparable = labels is not None and (col.evaluated_on is None or col.evaluated_on == evaluated_on)
        run = _mean([iou_by_label.get(c) for c in labels]) if comparable else None
        out[key] = _column(col, run)
    return out


def _column(col: Column, run: float | None) -> dict[str, Any]:
    run_pct = None if run is None else round(100 * run, 2)
    return {"classes": col.classes, "group": col.group, "paper": col.value, "run": run_pct,
            "diff": None if run_pct is None else round(run_pct - col.value, 2)}

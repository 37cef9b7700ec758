"""Runs that differ only by seed or class order, grouped as mean ± std; and what a multi-step
chain forgets, class by class and step by step.

A group is the runs of one dataset, task (in any class order), step and method whose
recorded options are equal but for the seed, the class order and the paths a run names (its
own directory, its data, its --prev): the same recipe run several times. Its spread is the
sample standard deviation (n - 1), so a group of one has none. Across class orders, old/new
mean the classes each run's order put in those steps, as PLOP and MiB average their orders;
a class's row averages the runs that have seen it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from incseg_cli.datasets.orders import PAPERS
from incseg_cli.fileio import write_text
from incseg_cli.stages.report.runs import COLUMNS, Report, Run
from incseg_cli.tasks import split_key

# Options that name where a run is or what it continued, not what it does; the seed and the
# class order are what a group varies.
NOT_RECIPE = frozenset({"seed", "class_order", "out", "prev", "current", "bank", "data", "splits", "workers",
                        "device", "force", "image_labels", "config_file"})
GROUP_COLUMNS = (*COLUMNS, "hiou")


def recipe_of(run: Run) -> tuple:
    """What a run does, without its seed, class order and paths: runs with the same recipe are repeats."""
    options = {k: v for k, v in run.options.items() if k not in NOT_RECIPE}
    if isinstance(options.get("task"), str):
        options["task"] = split_key(options["task"])[0]
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


def order_of(run: Run) -> str:
    """The class order of a run as its task key names it (``papers`` for none)."""
    return split_key(run.metrics["task"])[1] or PAPERS


def distinct_orders(group: dict[str, Any]) -> list[str]:
    """The class orders of a group's runs, each once, in the group's order."""
    return list(dict.fromkeys(group["orders"]))


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of the values that exist; std is the sample one (n - 1), None below 2."""
    kept = [v for v in values if v is not None and not math.isnan(v)]
    n = len(kept)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(kept) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def seed_groups(report: Report) -> list[dict[str, Any]]:
    """Every group of two or more runs of one recipe (dataset, task, step, method, options but
    the seed and the class order): per column and per class, mean ± std over the runs, and the
    papers' rows that a run of the papers' order was shown beside."""
    buckets: dict[tuple, list[Run]] = {}
    for run in report.runs:
        key = (run.dataset, split_key(run.metrics["task"])[0], run.step, run.method, recipe_of(run))
        buckets.setdefault(key, []).append(run)
    published_of = {id(row.run): row.published for row in report.rows}
    groups = []
    for (dataset, task, step, method, _), runs in buckets.items():
        if len(runs) < 2:
            continue
        runs = sorted(runs, key=lambda r: (order_of(r) != PAPERS, order_of(r), r.options.get("seed", 0), str(r.path)))
        papers = next((published_of.get(id(r)) for r in runs if published_of.get(id(r))), [])
        per_class: dict[int, list[float | None]] = {}
        for run in runs:
            for label, iou in run.iou_by_label().items():
                per_class.setdefault(label, []).append(iou)
        groups.append({
            "dataset": dataset, "task": task, "step": step, "method": method, "n": len(runs),
            "seeds": [r.options.get("seed") for r in runs], "orders": [order_of(r) for r in runs],
            "runs": [str(r.path) for r in runs],
            "miou": {c: mean_std([(r.metrics["miou"].get(c) if c != "hiou" else r.metrics.get("hiou"))
                                  for r in runs]) for c in GROUP_COLUMNS},
            "classes": {str(label): mean_std(values) for label, values in sorted(per_class.items())},
            "published": [{"name": p["name"], "cite": p["cite"],
                           "columns": {k: {"classes": c["classes"], "paper": c["paper"]} for k, c in p["columns"].items()}}
                          for p in papers],
        })
    return sorted(groups, key=lambda g: (g["dataset"], g["task"], g["step"], g["method"]))


def forgetting(report: Report) -> list[dict[str, Any]]:
    """Per multi-step chain (step 0 and at least two more): every class's IoU after every
    step (None before the step that adds it), and the old/new/all mIoU per step."""
    out = []
    for chain in report.chains:
        last_at: dict[int, Run] = {}
        for run in chain["runs"]:  # a step run twice (ALIFE, then ALIFE-M): its last run
            last_at[run.step] = run
        runs = [last_at[s] for s in sorted(last_at)]
        if len(runs) < 3:
            continue
        steps = [r.step for r in runs]
        labels = sorted({label for r in runs for label in r.iou_by_label()})
        names = {c["label"]: c.get("name") for r in runs for c in r.metrics.get("classes", [])}
        out.append({
            "label": chain["label"], "dataset": chain["dataset"], "task": chain["task"], "steps": steps,
            "runs": [str(r.path) for r in runs],
            "classes": {str(label): {"name": names.get(label), "iou": [r.iou_by_label().get(label) for r in runs]}
                        for label in labels},
            "miou": {c: [r.metrics["miou"].get(c) for r in runs] for c in COLUMNS},
        })
    return out


def groups_csv(groups: list[dict[str, Any]]) -> str:
    """One line per group and column: dataset, task, step, method, n (the runs behind that
    column: a class counts the runs that have seen it), orders, column, mean, std (in [0, 1])."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "task", "step", "method", "n", "orders", "column", "mean", "std"])
    for g in groups:
        orders = " ".join(distinct_orders(g))
        for column, stats in [*g["miou"].items(), *((f"class {k}", v) for k, v in g["classes"].items())]:
            writer.writerow([g["dataset"], g["task"], g["step"], g["method"], stats["n"], orders, column,
                             _num(stats["mean"]), _num(stats["std"])])
    return buffer.getvalue()


def forgetting_csv(chain: dict[str, Any]) -> str:
    """A class x step table of one chain: IoU in [0, 1], empty before the class's step."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "name", *(f"step {s}" for s in chain["steps"])])
    for label, entry in chain["classes"].items():
        writer.writerow([label, entry["name"] or "", *(_num(v) for v in entry["iou"])])
    return buffer.getvalue()


def forgetting_file(chain: dict[str, Any]) -> str:
    return f"forgetting-{chain['dataset']}-{chain['task']}-{chain['label'].split(' ')[0]}.csv"


def write_tables(groups: list[dict[str, Any]], chains: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """groups.csv (when a group exists) and one forgetting-*.csv per chain, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if groups:
        written.append(out_dir / "groups.csv")
        write_text(written[-1], groups_csv(groups))
    for chain in chains:
        written.append(out_dir / forgetting_file(chain))
        write_text(written[-1], forgetting_csv(chain))
    return written


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def pm(stats: dict[str, Any]) -> str:
    """``71.2 ± 1.3``: mean ± std in %, ``–`` without values."""
    if stats["mean"] is None:
        return "–"
    return f"{100 * stats['mean']:.1f}" + ("" if stats["std"] is None else f" ± {100 * stats['std']:.1f}")

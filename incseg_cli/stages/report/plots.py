"""A report as figures (matplotlib, written as PNG files): mIoU per step, per class group, per
class, and each run's loss curves."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from incseg_cli.console import warn
from incseg_cli.engine.losstable import read_losses
from incseg_cli.errors import UsageError
from incseg_cli.fileio import atomic_path
from incseg_cli.tasks import get_task

from incseg_cli.stages.report.groups import forgetting
from incseg_cli.stages.report.runs import COLUMNS, Report, Row, Run, order_key, scores_in

# -- plots ----------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (headless machines, CI)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _values(xs: list[float | None]) -> list[float]:
    return [math.nan if v is None else 100 * v for v in xs]


def plot_steps(report: Report, path: Path) -> None:
    """Per task: mIoU of the base (step-0) classes and of all seen classes against the step,
    one line per chain; joint training dashed, scored at every step."""
    plt = pyplot()
    tasks = sorted({(c["dataset"], c["task"]) for c in report.chains})
    fig, axes = plt.subplots(len(tasks) or 1, 2, figsize=(10, 3.6 * max(len(tasks), 1)), squeeze=False)
    for row, key in enumerate(tasks):
        task = get_task(*key)
        chains = sorted((c for c in report.chains if (c["dataset"], c["task"]) == key), key=lambda c: order_key(c["label"]))
        last = max(s for c in chains for s in c["by_step"])
        for col, (group, name) in enumerate((("base", "base classes (step 0)"), ("all", "all seen classes"))):
            ax = axes[row][col]
            for chain in chains:
                steps = list(chain["by_step"])
                ax.plot(steps, _values([chain["by_step"][s].get(group) for s in steps]), marker="o", label=chain["label"])
            for run in report.joint:
                if run.dataset == key[0]:
                    steps = list(range(last + 1))
                    ax.plot(steps, _values([scores_in(run, task, s)[group] for s in steps]), "k--", label=run.label)
            ax.set_title(f"{key[1]}: {name}")
            ax.set_xlabel("step")
            ax.set_ylabel("mIoU %")
            ax.set_xticks(range(last + 1))
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        axes[row][1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_forgetting(chain: dict[str, Any], path: Path) -> None:
    """One chain across its steps: each class's IoU from the step that adds it (thin lines,
    coloured by that step) and the old / new / all mIoU (thick): what the method forgets, and when."""
    plt = pyplot()
    steps = chain["steps"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = plt.get_cmap("viridis")
    for entry in chain["classes"].values():
        first = next((i for i, v in enumerate(entry["iou"]) if v is not None), None)
        if first is None:
            continue
        left.plot(steps[first:], _values(entry["iou"][first:]), color=colours(first / max(1, len(steps) - 1)),
                  alpha=0.6, linewidth=1)
    left.set_title(f"{chain['task']} {chain['label']}: IoU of each class (colour: the step that adds it)")
    for group in COLUMNS:
        right.plot(steps, _values(chain["miou"][group]), marker="o", linewidth=2, label=group)
    right.set_title("old / new / all mIoU")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.set_ylabel("IoU %")
        ax.set_xticks(steps)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def forgetting_plot_name(chain: dict[str, Any]) -> str:
    return f"forgetting-{chain['dataset']}-{chain['task']}-{chain['label'].split(' ')[0]}.png"


def _rows_at(report: Report, task: str, step: int) -> list[Row]:
    return [r for r in report.rows if r.task == task and r.step == step]


def plot_groups(report: Report, task: str, step: int, path: Path) -> None:
    """Old / new / all mIoU of every method at one step, grouped bars."""
    plt = pyplot()
    rows = _rows_at(report, task, step)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 3.8))
    width = 0.8 / len(COLUMNS)
    for k, group in enumerate(COLUMNS):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        bars = ax.bar(xs, _values([r.miou.get(group) for r in rows]), width, label=group)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(rows)), [r.label for r in rows], rotation=20)
    ax.set_ylabel("mIoU %")
    ax.set_ylim(0, 100)
    ax.set_title(f"{task} step {step}: old / new / all")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_classes(report: Report, task_key: tuple[str, str], step: int, path: Path) -> None:
    """Per-class IoU of every run at ``step`` (and joint training), grouped bars per class."""
    plt = pyplot()
    task = report.tasks.get(task_key) or get_task(*task_key)
    rows = _rows_at(report, task.key, step)
    labels = task.seen_classes(step)
    name_of = {int(c["label"]): c["name"] for r in rows for c in r.run.metrics["classes"]}
    fig, ax = plt.subplots(figsize=(min(24, max(8, 0.12 * len(labels) * len(rows) + 2)), 4))
    width = 0.8 / max(len(rows), 1)
    for k, row in enumerate(rows):
        iou = row.run.iou_by_label()
        xs = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, _values([iou.get(c) for c in labels]), width, label=row.label)
    first_new = len(task.old_classes(step))
    if 0 < first_new < len(labels):
        ax.axvline(first_new - 0.5, color="grey", lw=0.8)  # old | new
    ax.set_xticks(range(len(labels)), [f"{c} {name_of.get(c, '')}".strip() for c in labels], rotation=60,
                  ha="right", fontsize=7)
    ax.set_ylabel("IoU %")
    ax.set_ylim(0, 100)
    ax.set_title(f"{task.key} step {step}: per-class IoU (old classes left of the line, new right)")
    ax.legend(fontsize=7, ncol=min(len(rows), 4))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


LOSSES_FILE = "losses.csv"  # one row per training iteration (engine/losstable.py)


def loss_rows(run: Run) -> tuple[list[str], list[dict[str, Any]]]:
    """(loss names, rows by iteration) of the run's losses.csv, the last row of an iteration
    kept; no rows when the file is absent or holds no complete line."""
    columns, rows = read_losses(run.path / LOSSES_FILE)
    by_iteration = {int(r["iteration"]): r for r in rows}
    names = [c for c in columns if c not in ("iteration", "epoch") and not c.startswith("lr")]
    return names, [by_iteration[i] for i in sorted(by_iteration)]


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average, NaN-aware (a diverged iteration does not blank the curve)."""
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        finite = [x for x in acc if math.isfinite(x)]
        out.append(sum(finite) / len(finite) if finite else math.nan)
    return out


def plot_losses(run: Run, path: Path) -> bool:
    """Training losses of one run against the iteration: each named loss and the total, raw
    (faint) and as a moving average, epoch boundaries dotted; the learning rate of every
    parameter group below. False (nothing written) when the run has no losses.csv rows."""
    names, rows = loss_rows(run)
    if not rows or not names:
        return False
    plt = pyplot()
    its = [int(r["iteration"]) for r in rows]
    lr_names = sorted({k for r in rows for k in r if k.startswith("lr")})
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    window = max(1, len(rows) // 40)
    for name in names:
        values = [float(r.get(name, math.nan)) for r in rows]
        total = name == "total"
        line, = ax.plot(its, _smooth(values, window), lw=2 if total else 1.2, color="black" if total else None,
                        label=name, zorder=3 if total else 2)
        ax.plot(its, values, lw=0.5, alpha=0.25, color=line.get_color())
    epochs = [int(r["epoch"]) for r in rows]
    for k in range(1, len(rows)):
        if epochs[k] != epochs[k - 1]:
            for a in (ax, ax_lr):
                a.axvline(its[k] - 0.5, color="grey", lw=0.6, ls=":")
    for name in lr_names:
        ax_lr.plot(its, [r.get(name, math.nan) for r in rows], lw=1, label=name)
    ax.set_ylabel("loss")
    ax.set_title(f"{run.metrics['task']} step {run.step} · {run.label}: training losses "
                 f"({len(rows):,} iterations, {epochs[-1]} epochs; moving average of {window})", fontsize=9)
    ax.legend(fontsize=7, ncol=min(len(names), 6))
    ax.grid(alpha=0.3)
    ax_lr.set_xlabel("iteration (dotted: epoch boundaries)")
    ax_lr.set_ylabel("lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if len(lr_names) > 1:
        ax_lr.legend(fontsize=7, ncol=len(lr_names))
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")


def loss_plot_name(run: Run) -> str:
    return f"losses-{run.dataset}-{run.metrics['task']}-step{run.step}-{_safe(run.label)}.png"


def write_plots(report: Report, out_dir: str | Path, classes_step: int | None = None,
                losses: bool = True) -> list[Path]:
    """miou-per-step.png, per incremental task groups-<task>-step<N>.png (old/new/all bars)
    and classes-<task>-step<N>.png (per-class bars), N = ``classes_step`` or the task's
    latest step in the report; with ``losses``, per run losses-<dataset>-<task>-step<N>-<label>.png
    from its losses.csv (a run without one is a warning). Returns the written paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: --plots needs a directory, this is a file")
    keys = sorted(report.tasks) or sorted({(r.run.dataset, r.task) for r in report.rows})
    steps = {}
    for key in keys:
        present = sorted({r.step for r in report.rows if (r.run.dataset, r.task) == (key[0], key[1])})
        step = present[-1] if classes_step is None else classes_step
        if step not in present:
            raise UsageError(f"--classes-step {step}: no run of {key[1]} at that step in the report "
                             f"(steps present: {', '.join(map(str, present))})")
        steps[key] = step
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if report.chains:
        written.append(out_dir / "miou-per-step.png")
        plot_steps(report, written[-1])
    for chain in forgetting(report):
        written.append(out_dir / forgetting_plot_name(chain))
        plot_forgetting(chain, written[-1])
    for key, step in steps.items():
        written.append(out_dir / f"groups-{key[1]}-step{step}.png")
        plot_groups(report, key[1], step, written[-1])
        written.append(out_dir / f"classes-{key[1]}-step{step}.png")
        plot_classes(report, key, step, written[-1])
    for run in report.runs if losses else []:
        path = out_dir / loss_plot_name(run)
        if plot_losses(run, path):
            written.append(path)
        else:
            warn(f"{run.path}: no {LOSSES_FILE} (a run made before incseg wrote one); no loss curve")
    return written

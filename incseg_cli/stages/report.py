"""report: tables and plots from finished run directories, given in any order.

Each run directory contributes its ``metrics.json`` (scores) and ``manifest.json`` (train
time, and the input checkpoints that link a step to the run it continued from). Runs are
labelled by method and ordered by task and step; linked runs form chains (step 0 → step 1 →
...), one line per chain in the per-step plot.

A joint-training run (the ``offline`` task) has no old/new split of its own: it is scored in
the class groups of every incremental task of the same dataset in the report, at that task's
latest step present, from its per-class IoU. That makes it the ceiling row of the comparison.

Paths that are not finished runs (a feature bank, a rotations file, a stray file, a directory
without a run, an unfinished run) are skipped with one warning each, so that ``report
runs/toy/*`` works; it is an error only when nothing is left to report. For runs on VOC, ADE
or COCO (not toy data), the papers' published numbers of the same method, task, setting and
step (``published.py``) are listed beside the run's, computed over the same classes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from incseg_cli import datasets, published
from incseg_cli.console import warn
from incseg_cli.engine.evaluate import unlearned_classes
from incseg_cli.engine.losstable import read_losses
from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError, UsageError
from incseg_cli.fileio import atomic_path, read_json_object, sha256_file
from incseg_cli.methods.registry import JOINT, report_order
from incseg_cli.reporting import pct
from incseg_cli.tasks import Task, get_task

CEILING = JOINT
COLUMNS = ("old", "new", "all")
REQUIRED_METRICS = ("dataset", "task", "step", "miou", "classes")


@dataclass
class Run:
    path: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    label: str = ""
    parent: "Run | None" = None
    children: list["Run"] = field(default_factory=list)
    _sha: str | None = None

    @property
    def dataset(self) -> str:
        return self.metrics["dataset"]

    @property
    def task(self) -> Task:
        return get_task(self.dataset, self.metrics["task"])

    @property
    def step(self) -> int:
        return int(self.metrics["step"])

    @property
    def method(self) -> str:
        return str(self.metrics.get("method") or self.manifest.get("method") or "?")

    @property
    def is_joint(self) -> bool:
        return self.task.num_steps == 1

    @property
    def checkpoint(self) -> Path:
        return (self.path / "checkpoint.pt").resolve()

    @property
    def seconds(self) -> float | None:
        value = self.manifest.get("train_seconds")
        return float(value) if value is not None else None

    def sha256(self) -> str | None:
        if self._sha is None and self.checkpoint.is_file():
            self._sha = sha256_file(self.checkpoint)
        return self._sha

    @property
    def val_set(self) -> str:
        """The val set the run was scored on (metrics written before --val-set: every image)."""
        return str((self.metrics.get("protocol") or {}).get("val_set", "all"))

    @property
    def val_images(self) -> int | None:
        return (self.metrics.get("protocol") or {}).get("images")

    @property
    def options(self) -> dict[str, Any]:
        return self.manifest.get("options") or {}

    @property
    def is_toy(self) -> bool:
        """Trained with the toy preset or on data from ``make-toy-data``: no paper to compare with."""
        if self.options.get("preset") == "toy":
            return True
        data = self.options.get("data")
        return bool(data) and (Path(data) / "toy.json").is_file()

    def variant(self) -> str | None:
        """``relaxed`` for a WILSON run that learned from old and new image labels (Table 5),
        read from its checkpoint header only when the run was given a label table."""
        if self.method != "wilson" or not self.options.get("image_labels") or not self.checkpoint.is_file():
            return None
        from incseg_cli.engine.checkpoint import load_checkpoint  # torch, for this one header only
        from incseg_cli.methods.wilson import LABELS_RELAXED

        header = load_checkpoint(self.checkpoint).header
        return "relaxed" if (header.get("wilson") or {}).get("image_labels") == LABELS_RELAXED else None

    def iou_by_label(self) -> dict[int, float | None]:
        return {int(c["label"]): c["iou"] for c in self.metrics["classes"]}


class NotARun(InputError):
    """A path that is not a finished run: skipped with a warning when other runs are left."""


def _file_kind(path: Path) -> str:
    if path.suffix in (".h5", ".hdf5"):
        return "a feature bank"
    if path.suffix == ".pt":
        return "a checkpoint or rotations file"
    return "a file"


def load_run(path: str | Path) -> Run:
    """A finished run directory (or its metrics.json), checked enough to be reported."""
    path = Path(path)
    if path.name == "metrics.json" and path.is_file():
        path = path.parent
    if not path.exists():
        raise InputError(f"{path}: run directory not found")
    if not path.is_dir():
        raise NotARun(f"{path}: not a run directory but {_file_kind(path)} "
                      "(give the directory that holds metrics.json)")
    manifest = read_json_object(path / "manifest.json", "run manifest") if (path / "manifest.json").is_file() else {}
    metrics_path = path / "metrics.json"
    status = manifest.get("status")
    if status and status != "complete":
        raise NotARun(f"{path}: run is not finished (status {status}); rerun its command to complete it")
    if not metrics_path.is_file():
        raise NotARun(f"{path}: no metrics.json, not a finished incseg run directory")
    metrics = read_json_object(metrics_path, "run metrics")
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        raise CorruptFileError(f"{metrics_path}: not incseg metrics (no {', '.join(missing)})")
    try:
        datasets.for_header(metrics)  # a dataset of one's own is described in its metrics
        get_task(metrics["dataset"], metrics["task"])
    except (UsageError, InputError) as err:
        raise IncompatibleError(f"{metrics_path}: {err}") from None
    return Run(path, metrics, manifest)


# -- linking --------------------------------------------------------------------------------------
def _input_checkpoints(run: Run) -> list[tuple[Path, str]]:
    inputs = run.manifest.get("inputs") or {}
    return [(Path(p), sha) for p, sha in inputs.items() if Path(p).suffix == ".pt"]


def link(runs: list[Run]) -> None:
    """Set each run's parent: the input checkpoint (manifest ``inputs``) that is another run
    of the report, matched by path, else by sha256; among several (a stage that reads the
    step t-1 and the step t run), the one of the highest step."""
    by_path = {r.checkpoint: r for r in runs}
    for run in runs:
        candidates = []
        for path, sha in _input_checkpoints(run):
            match = by_path.get(path.resolve()) if path.is_absolute() or path.exists() else None
            if match is None:
                match = next((r for r in runs if r is not run and r.step <= run.step and r.sha256() == sha), None)
            if match is not None and match is not run:
                candidates.append(match)
        if candidates:
            run.parent = max(candidates, key=lambda r: r.step)
            run.parent.children.append(run)


# -- scores ---------------------------------------------------------------------------------------
def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def scores_in(run: Run, task: Task, step: int) -> dict[str, float | None]:
    """mIoU of ``run`` in the class groups of ``task`` at ``step``, from its per-class IoU
    (classes without ground truth left out, as in ``evaluate``)."""
    iou = run.iou_by_label()
    groups = task.class_groups(step)
    return {g: _mean([iou.get(c) for c in groups[g]]) for g in ("old", "new", "all", "base", "background")}


def _order_key(label: str) -> tuple[int, str]:
    """The registry's order (step 0, the methods, the ceiling last); methods it does not know
    just before the ceiling."""
    order = report_order()
    name = label.split(" ")[0]
    return (2 * order.index(name) if name in order else 2 * len(order) - 3, label)


@dataclass
class Row:
    task: str
    step: int
    label: str
    method: str
    miou: dict[str, float | None]
    seconds: float | None
    run: Run
    scored_as: str | None = None  # for joint runs: the task/step whose class groups score it
    # the papers' rows of the same method, task, setting and step, with the run's numbers
    published: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "step": self.step, "label": self.label, "method": self.method,
            "miou": self.miou, "val_set": self.run.val_set, "val_images": self.run.val_images,
            "train_seconds": self.seconds, "run": str(self.run.path),
            "parent": str(self.run.parent.path) if self.run.parent else None,
            **({"scored_as": self.scored_as} if self.scored_as else {}),
            "unlearned": self.unlearned,
            "published": self.published,
        }

    @property
    def unlearned(self) -> list[dict[str, Any]]:
        """The step's classes the run never predicts right (recomputed: older metrics.json
        files do not list them)."""
        return [] if self.scored_as else unlearned_classes(self.run.metrics.get("classes", []))


@dataclass
class Report:
    runs: list[Run]
    rows: list[Row]
    chains: list[dict[str, Any]]
    joint: list[Run]
    # (dataset, task key) -> Task, for every incremental task in the report
    tasks: dict[tuple[str, str], Task]
    skipped: list[str] = field(default_factory=list)  # the warnings of the paths left out

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": {
                "old": "mean IoU of the classes of earlier steps (background excluded)",
                "new": "mean IoU of the classes of this step (background excluded at step 0)",
                "all": "mean IoU of every class seen so far, background included",
            },
            "val_sets": {"all": "every val image (WILSON)",
                         "seen": "the val images with a class of steps 0..t (MiB, PLOP, ALIFE)"},
            "rows": [r.to_json() for r in self.rows],
            "skipped": self.skipped,
            "chains": [{"label": c["label"], "task": c["task"], "runs": [str(r.path) for r in c["runs"]],
                        "miou_by_step": {str(s): m for s, m in c["by_step"].items()}} for c in self.chains],
        }


def _unique_labels(runs: list[Run]) -> None:
    """Label = method; runs of the same task, step and method get their directory name too."""
    seen: dict[tuple, list[Run]] = {}
    for run in runs:
        seen.setdefault((run.dataset, run.metrics["task"], run.step, run.method), []).append(run)
    for group in seen.values():
        for run in group:
            run.label = run.method if len(group) == 1 else f"{run.method} ({run.path.name})"


def _chains(runs: list[Run]) -> list[dict[str, Any]]:
    """One chain per run whose continuations (if any) are all of another method, walked back
    to its step-0 run; per step, the last run of the chain at that step."""
    chains = []
    for run in runs:
        if run.is_joint or (run.children and all(c.method == run.method for c in run.children)):
            continue
        if run.step == 0 and run.children:
            continue
        path = [run]
        while path[0].parent is not None:
            path.insert(0, path[0].parent)
        by_step = {r.step: r.metrics["miou"] for r in path}
        chains.append({"label": run.label, "task": run.metrics["task"], "dataset": run.dataset,
                       "runs": path, "by_step": dict(sorted(by_step.items()))})
    return chains


def load_runs(paths: list[str | Path]) -> tuple[list[Run], list[str]]:
    """The finished runs among ``paths`` (each once) and one warning per path left out; an
    error when none is left (the path's own error when only one was given)."""
    if not paths:
        raise UsageError("give at least one run directory")
    runs, seen, skipped, errors = [], set(), [], []
    for p in paths:
        try:
            run = load_run(p)
        except NotARun as err:
            errors.append(err)
            skipped.append(f"{err}; skipped")
            continue
        if run.path.resolve() not in seen:
            seen.add(run.path.resolve())
            runs.append(run)
    if not runs:
        if len(errors) == 1:
            raise errors[0]
        raise InputError(f"nothing to report: none of the {len(paths)} paths is a finished run directory "
                         f"(first: {errors[0]})")
    for message in skipped:
        warn(message)
    return runs, skipped


def attach_published(rows: list[Row]) -> None:
    """The papers' rows beside every row of a VOC, ADE or COCO run (not toy data)."""
    for row in rows:
        run = row.run
        if run.is_toy:
            continue
        task = get_task(run.dataset, row.task)
        evaluated_on = f"{task.step_datasets[row.step].upper()} val"
        for entry in published.find(row.method, run.dataset, row.task, row.step, run.variant()):
            row.published.append({
                "name": entry.name, "source": entry.source, "citation": entry.cite, "cite": entry.short_cite,
                "task": entry.task,
                "setting": entry.setting, "step": entry.step, "val_set": entry.val_set,
                "supervision": entry.supervision, "variant": entry.variant, "note": entry.note,
                "columns": published.compare(entry, run.iou_by_label(), evaluated_on),
            })


def build_report(paths: list[str | Path], with_published: bool = True) -> Report:
    runs, skipped = load_runs(paths)
    _unique_labels(runs)
    link(runs)
    incremental = {(r.dataset, r.metrics["task"]): r.task for r in runs if not r.is_joint}
    latest = {}
    for r in runs:
        if not r.is_joint:
            key = (r.dataset, r.metrics["task"])
            latest[key] = max(latest.get(key, 0), r.step)
    rows = []
    for run in runs:
        if not run.is_joint:
            rows.append(Row(run.metrics["task"], run.step, run.label, run.method, dict(run.metrics["miou"]),
                            run.seconds, run))
            continue
        targets = [(key, task) for key, task in incremental.items() if key[0] == run.dataset]
        if not targets:
            rows.append(Row(run.metrics["task"], run.step, run.label, run.method, dict(run.metrics["miou"]),
                            run.seconds, run))
        for key, task in targets:
            step = latest[key]
            rows.append(Row(task.key, step, run.label, run.method, scores_in(run, task, step), run.seconds, run,
                            scored_as=f"{task.key} step {step}"))
    rows.sort(key=lambda r: (r.run.dataset, r.task, r.step, _order_key(r.label)))
    for row in rows:
        for c in row.unlearned:
            warn(f"{row.run.path}: class {c['label']} {c['name']} (new at step {row.step}) is "
                 f"{'never predicted' if c['never_predicted'] else 'never predicted right'} on the val set: "
                 "its 0 is a class not learned (see the run's metrics.json warnings)")
    if with_published:
        attach_published(rows)
    joint = [r for r in runs if r.is_joint]
    return Report(runs, rows, _chains(runs), joint, incremental, skipped)


# -- text -----------------------------------------------------------------------------------------
TITLE = "mIoU % per step and method (old: classes of earlier steps; new: this step's; all: every seen class + background)"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _val_set(row: Row) -> str:
    images = row.run.val_images
    return row.run.val_set if images is None else f"{row.run.val_set} ({images:,})"


def rich_table(report: Report):
    from rich.table import Table

    table = Table(title=TITLE)
    for col, justify in (("task", "left"), ("step", "right"), ("method", "left"), ("old", "right"),
                         ("new", "right"), ("all", "right"), ("val set", "left"), ("train s", "right"),
                         ("run", "left")):
        table.add_column(col, justify=justify)
    for r in report.rows:
        table.add_row(r.task, str(r.step), r.label, *(pct(r.miou.get(c)) for c in COLUMNS), _val_set(r),
                      _seconds(r.seconds), str(r.run.path))
    table.caption = _joint_note(report)
    return table


def _joint_note(report: Report) -> str | None:
    scored = sorted({r.scored_as for r in report.rows if r.scored_as})
    if not scored:
        return None
    return f"{CEILING}: trained on every class at once, scored in the class groups of {', '.join(scored)}"


def markdown_table(report: Report) -> str:
    lines = [f"_{TITLE}_", "", "| task | step | method | old | new | all | val set | train s |",
             "|---|---:|---|---:|---:|---:|---|---:|"]
    for r in report.rows:
        cells = [r.task, str(r.step), r.label, *(pct(r.miou.get(c)) for c in COLUMNS), _val_set(r),
                 _seconds(r.seconds)]
        lines.append("| " + " | ".join(cells) + " |")
    note = _joint_note(report)
    text = "\n".join(lines + (["", f"_{note}_"] if note else [])) + "\n"
    table = published_rows(report)
    if table:
        text += (f"\n_{PUBLISHED_TITLE}_\n\n| " + " | ".join(PUBLISHED_HEAD)
                 + " |\n|---|---:|---|---|---|---:|---:|---:|---|\n")
        text += "".join("| " + " | ".join(cells) + " |\n" for cells in table)
    return text


# -- the papers' numbers ----------------------------------------------------------------------------
PUBLISHED_TITLE = ("Published results of the same method, task, setting and step: run / paper / run - paper, "
                   "mIoU % over the paper's classes")


def _paper(value: float) -> str:
    """As printed in the paper: one decimal, or two where the source has two."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def _published_cell(column: dict[str, Any] | None) -> str:
    if column is None:
        return "–"
    if column["run"] is None:
        return f"– / {_paper(column['paper'])}"
    return f"{column['run']:.1f} / {_paper(column['paper'])} / {column['diff']:+.1f}"


PUBLISHED_HEAD = ("task", "step", "method", "published row", "classes (old / new / all)", "old", "new", "all",
                  "source")


def published_rows(report: Report) -> list[list[str]]:
    """One line per (run row, published row): the cells of ``PUBLISHED_HEAD``."""
    lines = []
    for r in report.rows:
        for entry in r.published:
            name = entry["name"] + (f", {entry['variant']}" if entry.get("variant") else "")
            if entry["val_set"] != r.run.val_set:
                name += f" (val set {entry['val_set']})"
            columns = [entry["columns"].get(c) for c in published.COMPARED]
            classes = " / ".join(c["classes"] if c else "–" for c in columns)
            lines.append([r.task, str(r.step), r.label, name, classes, *(_published_cell(c) for c in columns),
                          entry["cite"]])
    return lines


def published_table(report: Report):
    """The rich table of ``published_rows``, or None when no run has a published row."""
    from rich.table import Table

    rows = published_rows(report)
    if not rows:
        return None
    table = Table(title=PUBLISHED_TITLE)
    for col in PUBLISHED_HEAD:
        table.add_column(col, justify="right" if col in ("step", "old", "new", "all") else "left")
    for cells in rows:
        table.add_row(*cells)
    return table


# -- plots ----------------------------------------------------------------------------------------
def _pyplot():
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
    plt = _pyplot()
    tasks = sorted({(c["dataset"], c["task"]) for c in report.chains})
    fig, axes = plt.subplots(len(tasks) or 1, 2, figsize=(10, 3.6 * max(len(tasks), 1)), squeeze=False)
    for row, key in enumerate(tasks):
        task = get_task(*key)
        chains = sorted((c for c in report.chains if (c["dataset"], c["task"]) == key), key=lambda c: _order_key(c["label"]))
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


def _rows_at(report: Report, task: str, step: int) -> list[Row]:
    return [r for r in report.rows if r.task == task and r.step == step]


def plot_groups(report: Report, task: str, step: int, path: Path) -> None:
    """Old / new / all mIoU of every method at one step, grouped bars."""
    plt = _pyplot()
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
    plt = _pyplot()
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
    plt = _pyplot()
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

"""The runs of a report: finished run directories loaded, linked into chains and scored
in the class groups of each task and step (``build_report``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from incseg_cli import datasets, published
from incseg_cli.console import warn
from incseg_cli.engine.evaluate import unlearned_classes
from incseg_cli.errors import CorruptFileError, IncompatibleError, InputError, UsageError
from incseg_cli.fileio import read_json_object, sha256_file
from incseg_cli.methods.registry import JOINT, report_order
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

    @property
    def memory_bytes(self) -> int | None:
        """What the run's replay memory holds on disk: the image files of its image memory
        (``--replay-images``, the manifest's ``replay.bytes``), or ALIFE-M's rotated feature
        bank (``--bank``, while the file is there); None for a run without one."""
        replay = self.manifest.get("replay")
        if isinstance(replay, dict) and replay.get("bytes") is not None:
            return int(replay["bytes"])
        bank = self.options.get("bank") if self.method == "alife-m" else None
        if bank and Path(bank).is_file():
            return Path(bank).stat().st_size
        return None

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
    except (UsageError, InputError, IncompatibleError) as err:  # e.g. two orders of one name, two sequences
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


def order_key(label: str) -> tuple[int, str]:
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
            "miou": self.miou, "hiou": self.run.metrics.get("hiou"), "val_set": self.run.val_set,
            "val_images": self.run.val_images, "memory_bytes": self.run.memory_bytes,
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
    rows.sort(key=lambda r: (r.run.dataset, r.task, r.step, order_key(r.label)))
    for row in rows:
        for c in row.unlearned:
            warn(f"{row.run.path}: class {c['label']} {c['name']} (new at step {row.step}) is "
                 f"{'never predicted' if c['never_predicted'] else 'never predicted right'} on the val set: "
                 "its 0 is a class not learned (see the run's metrics.json warnings)")
    if with_published:
        attach_published(rows)
    joint = [r for r in runs if r.is_joint]
    return Report(runs, rows, _chains(runs), joint, incremental, skipped)

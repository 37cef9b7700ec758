"""Incremental tasks: which classes each step learns, and how labels map to model channels.

A task is named as in the papers (``15-5``, ``15-1``, ``10-10``, ``100-50``, ...) with an
optional ``-ov`` suffix for the overlapped setting. ``A-B`` means A base classes, then steps
of B classes until the label space is used up; ``A-B-C...`` lists every step (``10-5-5``).
Model channel k is the k-th class in step order; for VOC and ADE that is the label id.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from incseg_cli import datasets
from incseg_cli.config import option
from incseg_cli.datasets import orders
from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli.datasets.custom import load_task_file
from incseg_cli.errors import IncsegError, UsageError

# Rules that pick a step's training images from their class sets (see ``Task.select``).
RULE_OVERLAP = "overlap"  # at least one class of the step; anything else may appear too
RULE_DISJOINT = "disjoint"  # ... and no class of a later step
RULE_NO_LATER = "no-later"  # no class of a later step (pure-background images included)
RULE_ALL = "all"  # every image of the list


def standard_tasks(dataset: str) -> list[str]:
    """The tasks of ``dataset`` that ``prepare-splits`` and ``list-tasks`` show by default:
    its standard ones, then the named tasks of a dataset of one's own."""
    info = datasets.get(dataset)
    return list(dict.fromkeys([*info.standard_tasks, *info.tasks]))


@dataclass(frozen=True)
class Task:
    dataset: str
    name: str
    overlap: bool
    steps: tuple[tuple[int, ...], ...]
    rules: tuple[str, ...] = field(default=())
    # Label space the images of each step are read in (COCO-to-VOC reads VOC at step 1).
    step_datasets: tuple[str, ...] = field(default=())
    # "" for the papers' order; "random-SEED" for a seeded permutation of the classes, or the
    # name of one of the dataset's orders (``with_order``, ``datasets/orders.py``)
    class_order: str = ""

    def __post_init__(self) -> None:
        if not self.rules:
            rule = RULE_OVERLAP if self.overlap else RULE_DISJOINT
            object.__setattr__(self, "rules", tuple(rule for _ in self.steps))
        if not self.step_datasets:
            object.__setattr__(self, "step_datasets", tuple(self.dataset for _ in self.steps))

    # -- identity -----------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Directory name under ``splits/<dataset>/``: the name plus ``-ov`` when overlapped, and
        ``@ORDER`` for another class order (``15-5-ov@random-3``)."""
        key = f"{self.name}-ov" if self.overlap and len(self.steps) > 1 else self.name
        return key + self.order_suffix

    @property
    def order_suffix(self) -> str:
        """``@random-SEED`` or ``@NAME`` for another class order, else empty."""
        return f"{ORDER_SEP}{self.class_order}" if self.class_order else ""

    def order_entry(self) -> dict:
        """What a checkpoint header and metrics carry for a named class order (its sequence,
        so that an order read from a file needs no file later); nothing otherwise."""
        if not self.class_order or orders.RANDOM.fullmatch(self.class_order):
            return {}
        return orders.header_entry(datasets.get(self.dataset), self.class_order)

    @property
    def orderable(self) -> bool:
        """Whether a class order applies: an incremental task over one dataset's classes."""
        return self.num_steps > 1 and self.step_datasets[0] == self.step_datasets[-1]

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def class_names(self) -> list[str]:
        return list(datasets.get(self.dataset).class_names)

    # -- classes --------------------------------------------------------------------------------
    def check_step(self, step: int) -> None:
        if not 0 <= step < self.num_steps:
            raise UsageError(
                f"step {step} is outside task {self.dataset}/{self.key}, "
                f"which has steps 0..{self.num_steps - 1}"
            )

    def new_classes(self, step: int) -> list[int]:
        self.check_step(step)
        return list(self.steps[step])

    def old_classes(self, step: int) -> list[int]:
        """Label ids learned before ``step`` (background included)."""
        self.check_step(step)
        return [c for s in self.steps[:step] for c in s]

    def seen_classes(self, step: int) -> list[int]:
        self.check_step(step)
        return [c for s in self.steps[: step + 1] for c in s]

    def head_sizes(self, step: int) -> list[int]:
        self.check_step(step)
        return [len(s) for s in self.steps[: step + 1]]

    def class_groups(self, step: int) -> dict[str, list[int]]:
        """The groups whose mIoU every stage reports at ``step`` (see ``engine/evaluate.py``)."""
        return {
            "all": self.seen_classes(step),
            "old": [c for c in self.old_classes(step) if c != 0],
            "new": [c for c in self.new_classes(step) if c != 0],
            "background": [0],
            "base": [c for c in self.new_classes(0) if c != 0],
            "added": [c for s in range(1, step + 1) for c in self.new_classes(s)],
            # DKD's "old" (and hIoU's): background with the step-0 classes
            "base_bg": list(self.new_classes(0)),
        }

    def num_classes(self, step: int) -> int:
        return len(self.seen_classes(step))

    def model_index(self, label: int) -> int:
        return self.order.index(label)

    @property
    def order(self) -> list[int]:
        return [c for s in self.steps for c in s]

    # -- label remapping ------------------------------------------------------------------------
    def train_lut(self, step: int) -> np.ndarray:
        """Mask label -> training target at ``step``: the step's classes keep their channel,
        everything else (old, future, unknown) becomes background 0, 255 stays ignore."""
        lut = np.zeros(256, dtype=np.uint8)
        for label in self.new_classes(step):
            lut[label] = self.model_index(label)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        return lut

    def eval_lut(self, step: int) -> np.ndarray:
        """Mask label -> evaluation target: seen classes keep their channel, future ones are
        background (the MiB/PLOP protocol), 255 stays ignore."""
        lut = np.zeros(256, dtype=np.uint8)
        for label in self.seen_classes(step):
            lut[label] = self.model_index(label)
        lut[IGNORE_INDEX] = IGNORE_INDEX
        return lut

    # -- splits ---------------------------------------------------------------------------------
    def select(self, step: int, image_classes: dict[str, Iterable[int]]) -> list[str]:
        """Ids of the training images of ``step`` (sorted), from each image's class set."""
        self.check_step(step)
        new = set(self.steps[step]) - {0}
        later = {c for s in self.steps[step + 1 :] for c in s}
        rule = self.rules[step]
        chosen = []
        for image_id, classes in image_classes.items():
            present = set(classes) - {0, IGNORE_INDEX}
            if rule == RULE_ALL:
                keep = True
            elif rule == RULE_NO_LATER:
                keep = not (present & later)
            else:
                keep = bool(present & new)
                if keep and rule == RULE_DISJOINT:
                    keep = not (present & later)
            if keep:
                chosen.append(image_id)
        return sorted(chosen)

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "task": self.key,
            "name": self.name,
            "overlap": self.overlap,
            "steps": [list(s) for s in self.steps],
            "rules": list(self.rules),
            "step_datasets": list(self.step_datasets),
            # only another order is named: the papers' tasks keep their bytes (the shipped splits)
            **({"class_order": self.class_order} if self.class_order else {}),
            "class_names": {str(c): self.class_names[c] for c in self.order},
        }


def _parse_sizes(name: str, foreground: int) -> list[int] | None:
    if not re.fullmatch(r"\d+(-\d+)+", name):
        return None
    sizes = [int(x) for x in name.split("-")]
    if len(sizes) == 2 and sizes[0] + sizes[1] < foreground and sizes[1] > 0:
        rest = foreground - sizes[0]
        if rest % sizes[1] == 0:
            sizes = [sizes[0]] + [sizes[1]] * (rest // sizes[1])
    if any(s <= 0 for s in sizes) or sum(sizes) != foreground:
        return None
    return sizes


def class_ranges(labels: list[int]) -> str:
    """``a-b`` for a run of three or more consecutive ids, else the ids comma-separated;
    ``none`` when empty."""
    if len(labels) > 2 and labels == list(range(labels[0], labels[-1] + 1)):
        return f"{labels[0]}-{labels[-1]}"
    return ",".join(map(str, labels)) or "none"


ORDER_SEP = "@"


def split_key(key: str) -> tuple[str, str]:
    """``(task, order)`` of a task key: ``15-1-ov@plop-b`` → ``("15-1-ov", "plop-b")``, the
    order empty for the papers'. A task file's path may hold ``@``: the last one separates."""
    if ORDER_SEP not in key or Path(key).is_file():
        return key, ""
    base, _, order = key.rpartition(ORDER_SEP)
    return base, order


def order_seed(spec: str) -> int:
    """The seed of a random class order: ``random:SEED`` (as given) or ``random-SEED`` (as in a key)."""
    match = orders.RANDOM.fullmatch(spec)
    if match is None:
        raise UsageError(f"{spec!r} is not a random class order (random:SEED)")
    return int(match.group(1))


def known_orders(dataset: str) -> str:
    """The class orders ``dataset`` knows, for help and errors: a run of letter-named orders
    shortened (``plop-b..plop-w``), every other name as it is."""
    lettered: dict[str, list[str]] = {}
    others = []
    for name in sorted(datasets.get(dataset).orders):
        match = re.fullmatch(r"(.*-)[a-z]", name)
        if match:
            lettered.setdefault(match.group(1), []).append(name)
        else:
            others.append(name)
    parts = [f"{group[0]}..{group[-1]}" if len(group) > 2 else ", ".join(group) for group in lettered.values()]
    return ", ".join([orders.PAPERS, "random:SEED", *parts, *others])


def order_file(spec: str | None) -> Path | None:
    """The file a class order names (``ORDER.json``, a path), or None (papers, random:SEED, a name)."""
    if spec and (spec.endswith(".json") or os.sep in spec or "/" in spec):
        return Path(spec)
    return None


def order_name(dataset: str, spec: str) -> str:
    """The name class order ``spec`` has in a task key: ``random:SEED`` → ``random-SEED``, a
    named order of the dataset as it is, a file ``ORDER.json`` → the name it gives (the order
    joins the dataset for this process; runs carry it in their headers)."""
    if orders.RANDOM.fullmatch(spec):
        return f"random-{order_seed(spec)}"
    info = datasets.get(dataset)
    if spec in info.orders:
        return spec
    path = order_file(spec)
    if path is not None:
        name, classes = orders.read_order_file(info, path)
        datasets.register_order(dataset, name, classes)
        return name
    raise UsageError(f"unknown class order {spec!r} for dataset {dataset}; known: {known_orders(dataset)}, or a "
                     f"file ORDER.json ({orders.FILE_FORM})")


def with_order(dataset: str, name: str, order: str | None) -> str:
    """Task ``name`` of ``dataset`` in class order ``order`` (None or ``papers``: as it is)."""
    if not order or order == orders.PAPERS:
        return name
    return f"{split_key(name)[0]}{ORDER_SEP}{order_name(dataset, order)}"


def steps_in_order(steps: tuple[tuple[int, ...], ...], sequence: Iterable[int]) -> tuple[tuple[int, ...], ...]:
    """The same step sizes over the task's foreground classes taken in ``sequence``: background
    first at step 0, each step's classes sorted (their channels in label order, as MiB lists a
    step); classes of ``sequence`` outside the task are skipped."""
    in_task = {c for step in steps for c in step if c != 0}
    ordered = [int(c) for c in sequence if c in in_task]
    out, start = [], 0
    for i, step in enumerate(steps):
        size = len([c for c in step if c != 0])
        out.append(tuple(([0] if i == 0 else []) + sorted(ordered[start:start + size])))
        start += size
    return tuple(out)


def permuted_steps(steps: tuple[tuple[int, ...], ...], seed: int) -> tuple[tuple[int, ...], ...]:
    """The task's classes in a seeded permutation (``RandomState(seed)`` over the sorted
    foreground classes): the random orders PLOP and MiB vary when they report several."""
    classes = sorted(c for step in steps for c in step if c != 0)
    return steps_in_order(steps, np.random.RandomState(seed).permutation(classes))


def get_task(dataset: str, name: str) -> Task:
    """Parse a task name such as ``15-5``, ``15-5-ov``, ``10-5-5``, ``offline``, ``coco-voc``,
    a task the dataset names (a dataset of one's own lists its tasks by class names), or the
    path of a task file (JSON: ``{"name": ..., "steps": [[class names], ...]}``); a suffix
    ``@ORDER`` puts an incremental task in another class order: ``@random:SEED`` (or
    ``@random-SEED``) a seeded permutation, ``@NAME`` a named order of the dataset
    (``datasets/orders.py``)."""
    base_name, order = split_key(name)
    if order:
        task = get_task(dataset, base_name)
        if not task.orderable:
            raise UsageError(f"--task {name}: a class order applies to the incremental tasks of one dataset")
        key = order_name(dataset, order)
        steps = (permuted_steps(task.steps, order_seed(key)) if orders.RANDOM.fullmatch(key)
                 else steps_in_order(task.steps, datasets.get(dataset).orders[key]))
        return Task(dataset, task.name, task.overlap, steps, rules=task.rules,
                    step_datasets=task.step_datasets, class_order=key)
    info = datasets.get(dataset)
    if name.endswith(".json") and (os.sep in name or "/" in name or Path(name).is_file()):
        info, name = load_task_file(info, Path(name))
    base, overlap = (name[:-3], True) if name.endswith("-ov") else (name, False)
    if base in info.tasks:
        d = info.tasks[base]
        return Task(dataset, base, overlap, d.steps, rules=d.rules, step_datasets=d.step_datasets)
    if info.foreground:
        if base == "offline":
            return Task(dataset, "offline", False, (tuple(range(info.foreground + 1)),))
        sizes = _parse_sizes(base, info.foreground)
        if sizes is not None:
            steps, start = [], 1
            for i, size in enumerate(sizes):
                classes = list(range(start, start + size))
                steps.append(tuple(([0] if i == 0 else []) + classes))
                start += size
            return Task(dataset, base, overlap, tuple(steps))
    known = ", ".join(standard_tasks(dataset)) or "none"
    forms = (f"; A-B and A-B-C... forms must add up to the dataset's {info.foreground} classes"
             if info.foreground else "")
    raise UsageError(
        f"unknown task {name!r} for dataset {dataset}; known: {known} (append -ov for overlap{forms}; "
        "or give a task file TASK.json)"
    )


@dataclass(kw_only=True)
class ListTasksOptions:
    """What ``incseg list-tasks`` takes."""

    dataset: Optional[str] = datasets.dataset_option(
        "Only this dataset: voc, coco, ade, or one of your own (with --data). [default: all, or the one --data "
        "describes]")
    data: Optional[Path] = option(help="A root with incseg-dataset.json: list its dataset's tasks.")
    class_order: Optional[str] = option(metavar="ORDER",
                                        help="Show the incremental tasks in this class order: random:SEED, a named "
                                             "order (--orders lists them) or a file ORDER.json. [the papers' order]")
    orders: bool = option(False, help="List the class orders each dataset knows (the names --class-order takes) "
                                      "instead of its tasks.")


def _datasets_of(options: ListTasksOptions) -> list[str]:
    dataset = options.dataset
    if options.data is not None:
        dataset = datasets.resolve(dataset, options.data)
    elif dataset is not None:
        datasets.get(dataset)
    return [dataset] if dataset else datasets.builtin_names()


def list_tasks(options: ListTasksOptions) -> list[Task]:
    """``incseg list-tasks``: the standard tasks of the dataset ``options`` name (or the root
    describes), or of every built-in dataset; with a class order, the incremental ones in it
    (every dataset: those that know the order)."""
    names = _datasets_of(options)
    tasks = [get_task(ds, name) for ds in names for name in standard_tasks(ds)]
    if not options.class_order or options.class_order == orders.PAPERS:
        return tasks
    ordered: list[Task] = []
    refused: list[IncsegError] = []
    for ds in names:
        try:
            name = order_name(ds, options.class_order)
        except IncsegError as err:  # an order of another dataset: listed under the one that knows it
            refused.append(err)
            continue
        ordered += [get_task(ds, with_order(ds, t.key, name)) for t in tasks if t.dataset == ds and t.orderable]
    if len(refused) == len(names):
        raise refused[0]
    return ordered


def list_orders(options: ListTasksOptions) -> list[dict[str, Any]]:
    """``incseg list-tasks --orders``: every named class order of the datasets ``options``
    name, ``{"dataset", "name", "classes"}`` (label ids in learning order)."""
    return [{"dataset": ds, "name": name, "classes": list(sequence)}
            for ds in _datasets_of(options) for name, sequence in sorted(datasets.get(ds).orders.items())]

"""Which training images each step of a task uses, written once to ``splits/``.

The per-image class sets come from a label table (``image_id<TAB>1,15``) or from scanning
the masks of a dataset root. ``write_splits`` applies ``Task.select`` to them and writes
``splits/<dataset>/<task>[-ov]/{task.json, train-<t>.txt, val.txt}`` plus the class table it
used, ``splits/<dataset>/labels-train.tsv`` (WILSON reads image-level labels from it without
opening masks). Training and evaluation read the files back with ``load_split``/``load_val``.

COCO-to-VOC: step 1 trains on VOC images. Their classes (VOC ids, mapped to COCO ids) are
written to ``splits/coco/labels-train-voc-as-coco.tsv``; ``task.json`` names, per step, the
table that holds its image labels (``load_labels`` reads it).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from incseg_cli import signals, datasets, console
from incseg_cli.config import option, validate
from incseg_cli.console import ProgressBar
from incseg_cli.data.splitroots import suggested_out, writable_splits_root
from incseg_cli.datasets import open_layout
from incseg_cli.datasets.base import IGNORE_INDEX
from incseg_cli.datasets.coco import VOC_TO_COCO
from incseg_cli.datasets.layout import classes_present
from incseg_cli.errors import IncompatibleError, InputError, UsageError
from incseg_cli.fileio import atomic_dir, write_text
from incseg_cli.presets import pool_workers_option, workers_or_default
from incseg_cli.tasks import Task, get_task, standard_tasks, with_order

HEADER = "image_id\tclasses"
LABELS_FILE = "labels-train.tsv"


# -- label tables ----------------------------------------------------------------------------------
def read_label_table(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> dict[str, list[int]]:
    """Read ``image_id<TAB>comma-separated class ids`` (header ``image_id<TAB>classes``).

    With ``class_names`` (index = label id) a class may also be written by its name
    (``img7<TAB>scratch,dent``), as image-level tags of one's own data usually are."""
    lookup = {name.lower(): i for i, name in enumerate(class_names or ())}
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: label table not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read label table ({type(err).__name__})") from None
    table: dict[str, list[int]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw
        if not line.strip():
            continue
        fields = line.split("\t")
        if number == 1 and fields[0].strip() == "image_id":
            continue
        if len(fields) > 2 or not fields[0] or any(ch.isspace() for ch in fields[0]):
            raise InputError(
                f"{path}:{number}: malformed line {line[:60]!r}; expected 'image_id<TAB>1,15'"
            )
        image_id = fields[0]
        classes: set[int] = set()
        field = fields[1].strip() if len(fields) == 2 else ""
        for token in field.split(",") if field else []:
            token = token.strip()
            if token.lower() in lookup and not token.isdigit():
                classes.add(lookup[token.lower()])
                continue
            if not token.isdigit() or not 0 <= int(token) <= 255:
                named = " or a class name" if lookup else ""
                raise InputError(f"{path}:{number}: class id {token!r} is not an integer in 0..255{named}")
            classes.add(int(token))
        if image_id in table:
            raise InputError(f"{path}:{number}: image id {image_id} appears twice")
        table[image_id] = sorted(classes)
    return table


def format_label_table(table: dict[str, Iterable[int]]) -> str:
    lines = [HEADER]
    for image_id in sorted(table):
        lines.append(f"{image_id}\t{','.join(str(c) for c in sorted(set(table[image_id])))}")
    return "\n".join(lines) + "\n"


def write_label_table(path: str | os.PathLike, table: dict[str, Iterable[int]]) -> None:
    """Write a label table atomically, rows sorted by image id."""
    write_text(path, format_label_table(table))


# -- scanning masks --------------------------------------------------------------------------------
_worker_state: dict[str, Any] = {}


def _init_worker(layout: Any, split: str, func: Callable) -> None:
    # Ctrl-C is handled by the parent, which terminates the pool: no traceback per worker.
    signals.pool_worker_init()
    _worker_state.update(layout=layout, split=split, func=func)


def _run_one(image_id: str) -> tuple[str, Any]:
    s = _worker_state
    return image_id, s["func"](s["layout"], s["split"], image_id)


def map_ids(
    layout: Any,
    split: str,
    ids: list[str],
    func: Callable[[Any, str, str], Any],
    workers: int = 2,
    description: str = "reading masks",
) -> Iterator[tuple[str, Any]]:
    """Yield ``(id, func(layout, split, id))`` for every id, in order, over a process pool.

    ``func`` must be a module-level function. Results stream through a chunked ``imap`` so
    memory stays bounded whatever the number of images. Exceptions (``InputError`` naming
    the file) propagate to the caller.
    """
    if workers <= 1 or len(ids) < 64:
        with ProgressBar(len(ids), description) as bar:
            for image_id in ids:
                yield image_id, func(layout, split, image_id)
                bar.advance()
        return
    chunk = max(1, min(64, len(ids) // (workers * 8)))
    # The pool is started before the progress bar so that no thread exists when it forks.
    with signals.blocked():  # until each worker has set its own signal handling
        pool = multiprocessing.get_context().Pool(workers, _init_worker, (layout, split, func))
    try:
        with ProgressBar(len(ids), description) as bar:
            for item in pool.imap(_run_one, ids, chunksize=chunk):
                yield item
                bar.advance()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _mask_classes(layout: Any, split: str, image_id: str) -> list[int]:
    return classes_present(layout.read_mask(split, image_id))


def scan_masks(layout: Any, split: str, workers: int = 2) -> dict[str, list[int]]:
    """Class ids present in every mask of ``split`` (255 excluded), read once in a pool."""
    ids = layout.ids(split)
    if not ids:
        raise InputError(f"{layout.root}: the {split} list is empty")
    return dict(map_ids(layout, split, ids, _mask_classes, workers, f"scanning {split} masks"))


# -- writing -----------------------------------------------------------------------------------
def voc_table_as_coco(table: dict[str, Iterable[int]]) -> dict[str, list[int]]:
    """A VOC class table in COCO ids (``datasets.coco.VOC_TO_COCO``)."""
    out = {}
    for image_id, classes in table.items():
        mapped = []
        for c in classes:
            if c == IGNORE_INDEX:
                continue
            if c not in VOC_TO_COCO:
                raise InputError(f"image {image_id}: class {c} is not a VOC label (0..20)")
            mapped.append(VOC_TO_COCO[c])
        out[image_id] = sorted(set(mapped))
    return out


def labels_file_name(task: Task, step: int) -> str:
    """File under ``<splits>/<dataset>/`` holding the image labels of ``step``'s images."""
    source = task.step_datasets[step]
    if source == task.dataset:
        return LABELS_FILE
    return f"labels-train-{source}-as-{task.dataset}.tsv"


def check_table(table: dict[str, Iterable[int]], label_space: str, what: str) -> None:
    """Every class id of ``table`` is a label of ``label_space`` (or 255); ``what`` names the
    table in the ``InputError``."""
    limit = datasets.get(label_space).num_classes
    for image_id, classes in table.items():
        for c in classes:
            if c != IGNORE_INDEX and not 0 <= c < limit:
                raise InputError(
                    f"{what}: image {image_id} has class {c}, outside the {label_space} labels 0..{limit - 1}"
                )


def _compact_json(obj: dict) -> str:
    """One top-level key per line (the step lists stay readable on one line each)."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in obj.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_splits(
    task: Task,
    image_classes_train: dict[str, Iterable[int]],
    val_ids: list[str],
    out_root: str | os.PathLike,
    *,
    step_classes: dict[str, dict[str, Iterable[int]]] | None = None,
) -> Path:
    """Write ``<out_root>/<dataset>/<task.key>/`` atomically and return its path.

    ``image_classes_train``: per-image class ids of the task's own dataset. For steps whose
    images come from another dataset (``task.step_datasets``, COCO-to-VOC step 1),
    ``step_classes[<that dataset>]`` holds their table in that dataset's own ids (VOC ids,
    mapped here to COCO ids).
    """
    out_root = Path(out_root)
    if not val_ids:
        raise InputError(f"no validation images for {task.dataset}/{task.key}")
    if len(set(val_ids)) != len(val_ids):
        raise InputError(f"the validation list of {task.dataset} has duplicate ids")
    tables: dict[str, dict[str, list[int]]] = {}
    check_table(image_classes_train, task.dataset, f"{task.dataset} label table")
    tables[task.dataset] = {k: sorted(set(v)) for k, v in image_classes_train.items()}
    for source in sorted(set(task.step_datasets) - {task.dataset}):
        if not step_classes or source not in step_classes:
            raise UsageError(
                f"task {task.dataset}/{task.key} trains some steps on {source} images: "
                f"give their class table (--{source}-labels or --{source}-data)"
            )
        check_table(step_classes[source], source, f"{source} label table")
        if (source, task.dataset) != ("voc", "coco"):
            raise UsageError(f"no mapping from {source} labels to {task.dataset} labels")
        tables[source] = voc_table_as_coco(step_classes[source])

    dataset_dir = out_root / task.dataset
    label_files: dict[str, str] = {}
    for source, table in tables.items():
        step = task.step_datasets.index(source)
        name = labels_file_name(task, step)
        text = format_label_table(table)
        target = dataset_dir / name
        if not target.is_file() or target.read_text() != text:
            write_text(target, text)
        label_files[source] = _sha(text)

    counts = []
    selected = []
    for step in range(task.num_steps):
        ids = task.select(step, tables[task.step_datasets[step]])
        selected.append(ids)
        counts.append(len(ids))
    meta = task.to_json()
    meta["counts"] = counts
    meta["val"] = len(val_ids)
    meta["labels"] = [
        {"file": labels_file_name(task, t), "sha256": label_files[task.step_datasets[t]]}
        for t in range(task.num_steps)
    ]
    target = dataset_dir / task.key
    with atomic_dir(target) as tmp:
        _umask = os.umask(0)
        os.umask(_umask)
        tmp.chmod(0o777 & ~_umask)  # mkdtemp makes it 0700
        (tmp / "task.json").write_text(_compact_json(meta))
        for step, ids in enumerate(selected):
            (tmp / f"train-{step}.txt").write_text("".join(f"{i}\n" for i in ids))
        (tmp / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    return target


@dataclass(kw_only=True)
class PrepareSplitsOptions:
    """What ``incseg prepare-splits`` takes."""

    dataset: Optional[str] = datasets.dataset_option()
    task: Optional[list[str]] = option(
        help="Task to prepare (repeatable): e.g. 15-5 or 15-5-ov, a task named in the dataset's description, or a "
             "task file TASK.json ({\"name\": ..., \"steps\": [[class names], ...]}). "
             "[default: every standard task of the dataset, disjoint and -ov]")
    data: Optional[Path] = option(help="Dataset root: scan its train masks for the classes of every image, and take "
                                       "the val ids from it.")
    labels: Optional[Path] = option(help="Label table of the train images (lines 'IMAGE_ID TAB 1,15', or class "
                                         "names) instead of scanning masks.")
    val_labels: Optional[Path] = option(help="Label table whose ids are the val images (needed with --labels unless "
                                             "--data is given).")
    voc_data: Optional[Path] = option(help="COCO-to-VOC: VOC root whose train masks give the step-1 image classes.")
    voc_labels: Optional[Path] = option(help="COCO-to-VOC: label table of the VOC train images (VOC ids).")
    class_order: Optional[str] = option(
        metavar="ORDER", help="Prepare the tasks in another class order: random:SEED, a published order (plop-b, "
                              "mib-b, ...: `incseg list-tasks --orders`) or a file ORDER.json; written as TASK@NAME, "
                              "the name train-base --class-order reads. [the papers' order]")
    out: Optional[Path] = option(
        help="Output directory; writes OUT/DATASET/TASK/. [$INCSEG_SPLITS, else ./splits if it exists, else "
             "~/.local/share/incseg/splits ($XDG_DATA_HOME): where the training stages look]")
    workers: Optional[int] = pool_workers_option("read masks")


def prepare_task_splits(options: PrepareSplitsOptions) -> dict[str, Any]:
    """``incseg prepare-splits``: ``{"out", "dataset", "tasks"}``, the tasks as
    ``prepare_splits`` summarises them; the dataset and the output root resolved as the
    command resolves them."""
    o = validate(options)
    dataset = datasets.resolve(o.dataset, o.data)
    out = o.out if o.out is not None else writable_splits_root()
    tasks = prepare_splits(dataset, o.task, out, data=o.data, labels=o.labels, val_labels=o.val_labels,
                           voc_data=o.voc_data, voc_labels=o.voc_labels, workers=workers_or_default(o.workers),
                           class_order=o.class_order)
    return {"out": str(out), "dataset": dataset, "tasks": tasks}


def prepare_splits(
    dataset: str,
    task_names: Iterable[str] | None,
    out: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    val_labels: str | os.PathLike | None = None,
    voc_data: str | os.PathLike | None = None,
    voc_labels: str | os.PathLike | None = None,
    workers: int = 2,
    class_order: str | None = None,
) -> list[dict[str, Any]]:
    """``prepare-splits``: write the split files of every task of ``task_names`` (default:
    the dataset's standard tasks, disjoint and -ov) and return their summaries. The image
    classes come from scanning ``data``'s train masks or from the label table ``labels``
    (ids, or a dataset's class names); the val ids from ``data`` or ``val_labels``. Every
    input is validated before the masks are scanned. ``class_order`` (``random:SEED``, a named
    order or an order file): the incremental tasks among them in that class order."""
    names = list(task_names) if task_names else [n for t in standard_tasks(dataset) for n in (t, f"{t}-ov")]
    if class_order:
        names = [with_order(dataset, n, class_order) for n in names if get_task(dataset, n).orderable]
    resolved: list[Task] = []
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

    class_names = datasets.get(dataset).class_names
    layout = open_layout(dataset, data) if data is not None else None
    if layout is not None:
        if labels is None:
            layout.ids("train")
        if val_labels is None:
            layout.ids("val")
    voc_layout = None
    if needs_voc and voc_labels is None:
        voc_layout = open_layout("voc", voc_data)
        voc_layout.ids("train")
    train_table = read_label_table(labels, class_names) if labels is not None else None
    val_ids = list(read_label_table(val_labels, class_names)) if val_labels is not None else layout.ids("val")
    voc_table = read_label_table(voc_labels) if needs_voc and voc_labels is not None else None
    if train_table is not None and not train_table:
        raise InputError(f"{labels}: the label table has no rows")
    if not val_ids:
        raise InputError(f"{val_labels or layout.list_source('val')}: no val images")

    if train_table is None:
        console.log(f"scanning the train masks of {data} ({workers} workers)")
        train_table = scan_masks(layout, "train", workers=workers)
    elif layout is not None:
        listed = set(layout.ids("train")) if _has_ids(layout, "train") else set(train_table)
        if listed != set(train_table):
            console.warn(f"{labels} and the train list of {data} name different images; using {labels}")
    if needs_voc and voc_table is None:
        console.log(f"scanning the train masks of {voc_data} ({workers} workers)")
        voc_table = scan_masks(voc_layout, "train", workers=workers)

    results = []
    for task in resolved:
        step_classes = {"voc": voc_table} if "voc" in task.step_datasets and task.dataset != "voc" else None
        summary = summarize(write_splits(task, train_table, val_ids, out, step_classes=step_classes))
        results.append(summary)
        for step, count in enumerate(summary["counts"]):
            if count == 0:
                console.warn(f"{dataset}/{task.key} step {step} has no training image")
    return results


def _has_ids(layout: Any, split: str) -> bool:
    try:
        layout.ids(split)
        return True
    except InputError:
        return False


# -- reading -----------------------------------------------------------------------------------
def prepare_command(task: Task, splits_root: Path, data_root: str | os.PathLike | None = None) -> str:
    """The ``prepare-splits`` command line that writes ``task``'s split files under ``splits_root``."""
    data = "--data ROOT"
    if data_root is not None:
        data = f"--data {data_root}"
    elif task.dataset == "voc":
        data = "--data VOC_ROOT (or --labels TABLE.tsv --val-labels VAL.tsv)"
    extra = " --voc-data VOC_ROOT" if "voc" in task.step_datasets and task.dataset != "voc" else ""
    return (f"incseg prepare-splits --dataset {task.dataset} --task {task.key} {data}{extra} "
            f"--out {suggested_out(Path(splits_root))}")


def check_split_root(layout: Any, split: str, ids: list[str], split_file: Path, task: Task,
                     splits_root: str | os.PathLike, data_root: str | os.PathLike) -> None:
    """Every image ``split_file`` lists exists under ``data_root``; otherwise one line naming
    the split file and the ``prepare-splits`` command that makes splits for this root. Most
    images missing means splits made for another root (the shipped VOC splits given the toy
    data); a few, an incomplete root or a damaged split file."""
    missing = [i for i in ids if not layout.image_path(split, i).is_file()]
    if not missing:
        return
    head = (f"{split_file}: names {len(missing)} of {len(ids)} images that {data_root} lacks "
            f"(first: {layout.image_path(split, missing[0])})")
    remake = (f"`{prepare_command(task, Path('SPLITS'), data_root)}` and pass --splits SPLITS "
              "(or export INCSEG_SPLITS=SPLITS)")
    if 2 * len(missing) > len(ids):
        raise InputError(f"{head}; the split files under {splits_root} were made for another dataset root: "
                         f"run {remake}")
    raise InputError(f"{head}; `incseg check-data --data {data_root}` lists what the root lacks, or make splits "
                     f"for it: {remake}")


def _read_meta(meta_path: Path, task: Task, splits_root: Path) -> dict[str, Any]:
    """``task.json`` as a dict, or an InputError saying to rewrite it."""
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"{meta_path}: unreadable ({type(err).__name__}); rerun `{prepare_command(task, splits_root)}`") from None
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: damaged (a JSON {type(meta).__name__}, not an object); "
                         f"rerun `{prepare_command(task, splits_root)}`")
    return meta


def _task_dir(splits_root: str | os.PathLike, task: Task) -> Path:
    splits_root = Path(splits_root)
    directory = splits_root / task.dataset / task.key
    meta_path = directory / "task.json"
    if not meta_path.is_file():
        raise InputError(
            f"no split files for {task.dataset}/{task.key} in {directory}: run "
            f"`{prepare_command(task, splits_root)}`"
        )
    meta = _read_meta(meta_path, task, splits_root)
    steps = [list(s) for s in task.steps]
    if meta.get("steps") != steps or meta.get("rules", list(task.rules)) != list(task.rules):
        raise IncompatibleError(
            f"{meta_path}: the split files were made for other steps/rules than task "
            f"{task.dataset}/{task.key}; rerun `{prepare_command(task, splits_root)}`"
        )
    return directory


def _read_ids(path: Path, task: Task, splits_root: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: split file missing; run `{prepare_command(task, splits_root)}`")
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable split file ({type(err).__name__}); rerun "
                         f"`{prepare_command(task, splits_root)}`") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise InputError(
            f"{path}: the split is empty (no image of the dataset contains the step's classes)"
        )
    for number, image_id in enumerate(ids, start=1):
        # one id a line: whitespace or control characters inside mean a damaged file
        if any(ch.isspace() or not ch.isprintable() for ch in image_id):
            raise InputError(f"{path}: entry {number} ({image_id[:40]!r}) is not an image id; rerun "
                             f"`{prepare_command(task, splits_root)}`")
    return ids


def load_split(splits_root: str | os.PathLike, task: Task, step: int) -> list[str]:
    """Training image ids of ``step`` (sorted)."""
    task.check_step(step)
    directory = _task_dir(splits_root, task)
    return _read_ids(directory / f"train-{step}.txt", task, Path(splits_root))


def load_val(splits_root: str | os.PathLike, task: Task) -> list[str]:
    """Validation image ids (the whole val set, used at every step)."""
    directory = _task_dir(splits_root, task)
    return _read_ids(directory / "val.txt", task, Path(splits_root))


def load_labels(splits_root: str | os.PathLike, task: Task, step: int) -> dict[str, list[int]]:
    """Image-level class ids (in the task's label space) of the training images of ``step``.

    Reads the table ``task.json`` names for the step and checks it is the one the split was
    made from (sha256).
    """
    task.check_step(step)
    directory = _task_dir(splits_root, task)
    meta = _read_meta(directory / "task.json", task, Path(splits_root))
    entries = meta.get("labels") or []
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("file"), str) and "/" not in e["file"]
            and isinstance(e.get("sha256", ""), str) for e in entries):
        raise InputError(f"{directory / 'task.json'}: damaged 'labels' entry; rerun "
                         f"`{prepare_command(task, Path(splits_root))}`")
    name = entries[step]["file"] if step < len(entries) else labels_file_name(task, step)
    path = directory.parent / name
    if not path.is_file():
        raise InputError(f"{path}: label table missing; run `{prepare_command(task, Path(splits_root))}`")
    if step < len(entries) and entries[step].get("sha256"):
        if hashlib.sha256(path.read_bytes()).hexdigest() != entries[step]["sha256"]:
            raise IncompatibleError(
                f"{path} has changed since {directory} was written; rerun "
                f"`{prepare_command(task, Path(splits_root))}`"
            )
    table = read_label_table(path)
    ids = load_split(splits_root, task, step)
    missing = [i for i in ids if i not in table]
    if missing:
        raise IncompatibleError(f"{path}: no labels for {len(missing)} images of step {step} (first: {missing[0]})")
    return {i: table[i] for i in ids}


def summarize(directory: Path) -> dict[str, Any]:
    meta = json.loads((directory / "task.json").read_text())
    return {"task": meta["task"], "dir": str(directory), "counts": meta["counts"], "val": meta["val"]}

"""A dataset of one's own: a root with images, masks and a description file.

    ROOT/incseg-dataset.json     the description (``incseg init-dataset ROOT`` writes it)
    ROOT/images/<id>.<jpg|png|...>
    ROOT/masks/<id>.png          one 8-bit PNG per image: values = class ids, ``ignore`` void

The description (JSON object):

    name          the dataset's name (letters, digits, ``.``, ``_``, ``-``; not voc/coco/ade)
    classes       class names, index = label id; index 0 is the background
    palette       optional [[R, G, B], ...] for the first ids (the VOC colour map otherwise)
    ignore        the mask value of void pixels (default 255); read as 255
    images/masks  the two folders (default ``images`` and ``masks``)
    train/val     optional list files (one id per line) relative to ROOT; when only one is
                  given the other split is every remaining image; when neither is, the
                  rule ``val_fraction`` (default 0.2) with ``split_seed`` (default 0) puts
                  each image in val by a hash of its id (stable when images are added)
    tasks         optional ``{"NAME": [[classes of step 0], [classes of step 1], ...]}``
                  (class names; background is part of step 0 without being listed)
    preset        optional recipe used when --preset is not given (default: toy for images of
                  at most SMALL_IMAGE_SIDE px on their shorter side, as found by init-dataset; voc)
    found         what init-dataset found (informational, not read)

Everything but ``found`` and the file layout travels in checkpoint headers
(``header_description``), so later stages know the dataset from the checkpoint alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from incseg_cli.datasets.layout import DatasetLayout, check_split, read_label_png, read_lines
from incseg_cli.datasets.base import IGNORE_INDEX, VOID_RGB, DatasetInfo, TaskDef, make_palette
from incseg_cli.datasets import registry
from incseg_cli.datasets.registry import DESCRIPTION_FILE
from incseg_cli.errors import IncompatibleError, InputError, UsageError

FORMAT = "incseg-dataset"
VERSION = 1
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
KNOWN_KEYS = {"format", "version", "name", "classes", "palette", "ignore", "images", "masks", "train", "val",
              "val_fraction", "split_seed", "tasks", "preset", "found", "comment"}


def _bad(source: str, what: str) -> InputError:
    return InputError(f"{source}: {what}")


def _check_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith("-ov"):
        raise _bad(source, f"name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (a folder name)")
    if name in registry.builtin_names():
        raise _bad(source, f"name {name!r} is a built-in dataset; choose another")
    return name


def _check_classes(classes: Any, source: str) -> tuple[str, ...]:
    if not isinstance(classes, list) or len(classes) < 2 or len(classes) > 255:
        raise _bad(source, "classes must be a list of 2 to 255 names (index = label id, 0 = background)")
    seen: dict[str, int] = {}
    for i, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise _bad(source, f"class {i} is {name!r}; class names are non-empty strings without outer spaces")
        if name.lower() in seen:
            raise _bad(source, f"classes {seen[name.lower()]} and {i} are both named {name!r}")
        seen[name.lower()] = i
    return tuple(classes)


def steps_from_names(name: str, classes: tuple[str, ...], steps: Any, source: str) -> TaskDef:
    """A task from its steps written as class names; background joins step 0. Every
    foreground class must come exactly once."""
    if not isinstance(steps, list) or not steps or not all(isinstance(s, list) and s for s in steps):
        raise _bad(source, f"task {name!r} must be a list of steps, each a non-empty list of class names")
    lowered = {c.lower(): i for i, c in enumerate(classes)}
    ids: list[tuple[int, ...]] = []
    placed: dict[int, int] = {}
    for t, step in enumerate(steps):
        row = []
        for cls in step:
            if not isinstance(cls, str) or cls.lower() not in lowered:
                raise _bad(source, f"task {name!r} step {t}: {cls!r} is not a class (classes: {', '.join(classes)})")
            c = lowered[cls.lower()]
            if c == 0 and t == 0:
                continue
            if c in placed or c == 0:
                where = "step 0 (background)" if c == 0 else f"step {placed[c]}"
                raise _bad(source, f"task {name!r}: class {classes[c]!r} is already in {where}")
            placed[c] = t
            row.append(c)
        if not row:
            raise _bad(source, f"task {name!r} step {t} has no class")
        ids.append(tuple(([0] if t == 0 else []) + row))
    missing = [classes[c] for c in range(1, len(classes)) if c not in placed]
    if missing:
        raise _bad(source, f"task {name!r} leaves out class(es) {', '.join(missing)}; every class must come at one step")
    return TaskDef(steps=tuple(ids))


def _check_task_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith("-ov") or name == "offline" \
            or re.fullmatch(r"\d+(-\d+)+", name):
        raise _bad(source, f"task name {name!r} must be a folder name, not end in -ov and not look like A-B")
    return name


def info_from_description(d: Any, source: str, root: str | os.PathLike | None) -> DatasetInfo:
    """A validated ``DatasetInfo`` from a description (file or checkpoint header)."""
    if not isinstance(d, Mapping):
        raise _bad(source, "the dataset description must be a JSON object")
    unknown = sorted(set(d) - KNOWN_KEYS)
    if unknown:
        raise _bad(source, f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})")
    name = _check_name(d.get("name"), source)
    classes = _check_classes(d.get("classes"), source)
    palette_entries = d.get("palette")
    if palette_entries is not None and (not isinstance(palette_entries, list) or len(palette_entries) > len(classes)):
        raise _bad(source, f"palette must list at most {len(classes)} colours, one per class")
    try:
        palette = make_palette(palette_entries)
    except UsageError as err:
        raise _bad(source, str(err)) from None
    palette[IGNORE_INDEX] = VOID_RGB
    ignore = d.get("ignore", IGNORE_INDEX)
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not len(classes) <= ignore <= 255:
        raise _bad(source, f"ignore {ignore!r} must be a mask value from {len(classes)} to 255 (not a class id)")
    preset = d.get("preset") or preset_for_sizes(d.get("found"))
    # Which presets exist is presets.py's to say (it reads this registry): it checks the name
    # when the preset is used (presets.default_preset), check-data when it checks the root.
    if not isinstance(preset, str) or not NAME_RE.fullmatch(preset):
        raise _bad(source, f"preset {preset!r} must be the name of a preset (see `incseg train-base --help`)")
    tasks_d = d.get("tasks") or {}
    if not isinstance(tasks_d, Mapping):
        raise _bad(source, "tasks must be an object {NAME: [[classes of step 0], ...]}")
    tasks = {_check_task_name(k, source): steps_from_names(k, classes, v, source) for k, v in tasks_d.items()}
    description = dict(d)
    description["root"] = str(root) if root is not None else None
    return DatasetInfo(
        name=name,
        class_names=classes,
        palette=palette,
        ignore_index=IGNORE_INDEX,
        layout=_opener(name),
        foreground=len(classes) - 1,
        standard_tasks=("offline",),
        tasks=tasks,
        preset=preset,
        description=description,
        help=f"a dataset of one's own ({source})",
    )


def _index(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """id (file name without suffix) -> file, for the files of ``folder`` with one of
    ``suffixes`` (any case). Two files of one id (a.jpg and a.png) are an error naming both:
    whichever were taken, the other would be silently ignored."""
    found: dict[str, Path] = {}
    twice: list[tuple[Path, Path]] = []
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in suffixes:
            continue
        if stem in found:
            twice.append((found[stem], folder / entry))
        else:
            found[stem] = folder / entry
    if twice:
        first, second = twice[0]
        more = f" (and {len(twice) - 1} more ids with two {what}s)" if len(twice) > 1 else ""
        raise InputError(f"{first} and {second}: two {what}s of id {first.stem!r}{more}; "
                         f"keep one {what} per id (rename or move the other)")
    return found


def image_index(folder: Path) -> dict[str, Path]:
    """id (file name without suffix) -> image file of every image in ``folder``; two images
    of one id (a.jpg and a.png) are an InputError naming both."""
    return _index(folder, IMAGE_EXTS, "image")


def mask_index(folder: Path) -> dict[str, Path]:
    """id -> mask file of every ``<id>.png`` (or ``.PNG``) in ``folder``; a.png and a.PNG
    are an InputError naming both."""
    return _index(folder, (".png",), "mask")


def read_user_json(path: Path, what: str) -> Any:
    """A user's JSON file (``what`` it is names it in the one-line error)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: {what} is not valid JSON ({err})") from None


def load_description(path: Path) -> DatasetInfo:
    """Read and validate ``ROOT/incseg-dataset.json``."""
    return info_from_description(read_user_json(path, "the description"), str(path), path.parent)


def header_description(info: DatasetInfo) -> dict[str, Any]:
    """The part of a description that defines the dataset (classes, palette, ignore value,
    tasks, preset), as stored in checkpoint headers."""
    assert info.description is not None
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": info.name,
        "classes": list(info.class_names),
        "palette": info.palette[: info.num_classes].tolist(),
        "ignore": int(info.description.get("ignore", IGNORE_INDEX)),
        "tasks": {k: [[info.class_names[c] for c in s if c != 0] for s in t.steps] for k, t in info.tasks.items()},
        "preset": info.preset,
    }


# Images whose shorter side is at most this many pixels get the toy recipe by default (64 px
# crops, a small encoder trained from scratch: runs on a CPU); larger ones the papers' (512 px
# crops of a ResNet-101 from ImageNet), which would upsample a 100 px image five times.
SMALL_IMAGE_SIDE = 160


def preset_for_sizes(found: Any) -> str:
    """The preset of a description that names none: from the most common image size that
    ``init-dataset`` recorded under ``found``, else voc."""
    common = (found or {}).get("sizes", {}).get("most_common") if isinstance(found, Mapping) else None
    if isinstance(common, list) and len(common) == 2 and all(isinstance(v, int) for v in common):
        return "toy" if min(common) <= SMALL_IMAGE_SIDE else "voc"
    return "voc"


def load_task_file(info: DatasetInfo, path: Path) -> tuple[DatasetInfo, str]:
    """Register the task of a task file (``{"name": ..., "steps": [[class names], ...],
    "overlap": false}``) with its dataset; returns the dataset and the task's key."""
    d = read_user_json(path, "the task file")
    if not isinstance(d, dict) or set(d) - {"name", "steps", "overlap", "dataset"}:
        raise InputError(f"{path}: a task file is {{\"name\": ..., \"steps\": [[class names], ...], \"overlap\": false}}")
    if d.get("dataset", info.name) != info.name:
        raise UsageError(f"{path}: task of dataset {d['dataset']!r}, not {info.name!r}")
    name = _check_task_name(d.get("name", path.stem), str(path))
    task = steps_from_names(name, info.class_names, d.get("steps"), str(path))
    if name in info.tasks and info.tasks[name].steps != task.steps:
        raise IncompatibleError(f"{path}: task {name!r} of dataset {info.name} is already defined with other steps")
    if not isinstance(d.get("overlap", False), bool):
        raise InputError(f"{path}: overlap must be true or false")
    info = registry.register(info.with_tasks({name: task}))
    return info, name + ("-ov" if d.get("overlap") else "")


# -- the root on disk ---------------------------------------------------------------------------
def split_of(image_id: str, val_fraction: float, seed: int) -> str:
    """``train`` or ``val`` from a hash of the id: stable whatever other images exist."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


class CustomLayout(DatasetLayout):
    """The root of a dataset of one's own (see the module docstring)."""

    expected_counts: dict[str, int] = {}

    def __init__(self, root: str | os.PathLike, info: DatasetInfo, label_space: str | None = None,
                 class_names: Sequence[str] = ()) -> None:
        self.dataset = info.name
        root = Path(root)
        path = root / DESCRIPTION_FILE
        if not path.is_file():
            what = "does not exist" if not root.exists() else f"has no {DESCRIPTION_FILE}"
            raise InputError(f"{root}: dataset root {what} (dataset {info.name} is described by one; "
                             f"`incseg init-dataset {root}` writes it)")
        described = load_description(path)
        if described.name != info.name or described.class_names != info.class_names:
            raise IncompatibleError(
                f"{path}: describes dataset {described.name!r} with classes {', '.join(described.class_names)}, "
                f"not {info.name!r} with {', '.join(info.class_names)}"
            )
        d = described.description or {}
        self.description = d
        self.images_dir = root / str(d.get("images", "images"))
        self.masks_dir = root / str(d.get("masks", "masks"))
        self.lists = {"train": d.get("train"), "val": d.get("val")}
        self.val_fraction = d.get("val_fraction", 0.2)
        self.split_seed = d.get("split_seed", 0)
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise InputError(f"{path}: val_fraction {self.val_fraction!r} must be between 0 and 1")
        if not isinstance(self.split_seed, int):
            raise InputError(f"{path}: split_seed must be an integer")
        for split, value in self.lists.items():
            if value is not None and not isinstance(value, str):
                raise InputError(f"{path}: {split} must be the path of a list file (or absent)")
        ignore = int(d.get("ignore", IGNORE_INDEX))
        self._lut: np.ndarray | None = None
        if ignore != IGNORE_INDEX:
            self._lut = np.arange(256, dtype=np.uint8)
            self._lut[ignore] = IGNORE_INDEX
        self._images: dict[str, Path] | None = None
        self._masks: dict[str, Path] | None = None
        super().__init__(root, label_space, info.class_names if label_space in (None, info.name) else class_names)

    def _check_root(self) -> None:
        super()._check_root()
        for what, folder in (("images", self.images_dir), ("masks", self.masks_dir)):
            if not folder.is_dir():
                raise InputError(f"{self.root}: no {folder.relative_to(self.root)}/ directory ({what})")

    def image_files(self) -> dict[str, Path]:
        """id -> image file, for every image in the images folder."""
        if self._images is None:
            self._images = image_index(self.images_dir)
        return self._images

    def mask_files(self) -> dict[str, Path]:
        """id -> mask file (``<id>.png``, any case of the suffix)."""
        if self._masks is None:
            self._masks = mask_index(self.masks_dir)
        return self._masks

    def mask_ids(self) -> list[str]:
        return sorted(self.mask_files())

    def all_ids(self) -> list[str]:
        """Ids with both an image and a mask, sorted."""
        images = self.image_files()
        return [i for i in self.mask_ids() if i in images]

    def _list_path(self, split: str) -> Path | None:
        value = self.lists[split]
        return None if value is None else self.root / value

    def list_source(self, split: str) -> str:
        check_split(split)
        path = self._list_path(split)
        if path is not None:
            return str(path)
        other = self._list_path("val" if split == "train" else "train")
        if other is not None:
            return f"every image not in {other}"
        return f"images with a mask, val by hash (val_fraction {self.val_fraction}, split_seed {self.split_seed})"

    def _load_ids(self, split: str) -> list[str]:
        path = self._list_path(split)
        if path is not None:
            if not path.is_file():
                raise InputError(f"{self.root}: no image list {path.relative_to(self.root)} for split {split}")
            return [line.split()[0] for line in read_lines(path)]
        other = "val" if split == "train" else "train"
        if self._list_path(other) is not None:
            taken = set(self.ids(other))
            return [i for i in self.all_ids() if i not in taken]
        return [i for i in self.all_ids() if split_of(i, self.val_fraction, self.split_seed) == split]

    def image_path(self, split: str, image_id: str) -> Path:
        return self.image_files().get(image_id, self.images_dir / f"{image_id}.jpg")

    def mask_path(self, split: str, image_id: str) -> Path:
        return self.mask_files().get(image_id, self.masks_dir / f"{image_id}.png")

    def read_mask(self, split: str, image_id: str) -> np.ndarray:
        mask = read_label_png(self.mask_path(split, image_id))
        return mask if self._lut is None else self._lut[mask]


class _Opener:
    """Picklable ``layout`` of a custom DatasetInfo: opens a root with the registered info."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, root: str | os.PathLike, label_space: str | None = None,
                 class_names: Sequence[str] = ()) -> CustomLayout:
            return CustomLayout(root, registry.get(self.name), label_space, class_names)


def _opener(name: str) -> _Opener:
    return _Opener(name)


"""The dataset registry: every dataset the tool can train on, each in one module.

The built-in datasets (``voc``, ``coco``, ``ade``) are modules of this package, loaded on
first use. A dataset of one's own is described by a file in its root
(``ROOT/incseg-dataset.json``, written by ``incseg init-dataset``) and joins the registry
when a stage opens that root (``from_root``) or reads a checkpoint trained on it
(``for_header``: the description travels in every checkpoint header).

    from incseg_cli import datasets
    info = datasets.get("voc")          # DatasetInfo: class_names, palette, ignore_index, ...
    info = datasets.for_header(ckpt.header)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Mapping

from incseg_cli.datasets.base import IGNORE_INDEX, DatasetInfo, TaskDef, bit_palette, make_palette
from incseg_cli.errors import IncompatibleError, UsageError

__all__ = [
    "IGNORE_INDEX", "DatasetInfo", "TaskDef", "bit_palette", "make_palette", "get", "names", "builtin_names",
    "register", "for_header", "header_entry", "from_root", "resolve", "DESCRIPTION_FILE",
]

BUILTINS = ("voc", "coco", "ade")
DESCRIPTION_FILE = "incseg-dataset.json"
HEADER_KEY = "dataset_info"  # checkpoint header field holding a custom dataset's description

_REGISTRY: dict[str, DatasetInfo] = {}
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTINS:
        info = importlib.import_module(f"incseg_cli.datasets.{name}").INFO
        _REGISTRY.setdefault(info.name, info)


def builtin_names() -> list[str]:
    """The datasets shipped with the tool (the choices of ``--dataset``)."""
    return list(BUILTINS)


def names() -> list[str]:
    """Every registered dataset: the built-ins, then datasets of one's own met so far."""
    _load_builtins()
    return list(_REGISTRY)


def get(name: str) -> DatasetInfo:
    """The dataset called ``name``; UsageError listing the known names otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UsageError(
            f"unknown dataset {name!r}; known: {', '.join(_REGISTRY)} (a dataset of your own is "
            f"read from {DESCRIPTION_FILE} in its root: give --data ROOT, see `incseg init-dataset`)"
        ) from None


def register(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` (or merge its tasks into the entry of the same name) and return the entry.

    A built-in name cannot be taken, and a second description of the same dataset must
    agree on its classes and ignore value and on any task both name (IncompatibleError)."""
    _load_builtins()
    old = _REGISTRY.get(info.name)
    if old is None:
        _REGISTRY[info.name] = info
        return info
    if old is info:
        return info
    if info.name in BUILTINS:
        raise UsageError(f"dataset name {info.name!r} is taken by a built-in dataset; rename yours")
    if old.class_names != info.class_names or old.ignore_index != info.ignore_index:
        raise IncompatibleError(
            f"dataset {info.name!r} is described twice with different classes: "
            f"{', '.join(old.class_names)} vs {', '.join(info.class_names)}"
        )
    # a custom dataset's void value on disk (read as 255) must be the one it was trained with
    ignores = [int((d.description or {}).get("ignore", 255)) for d in (old, info)]
    if ignores[0] != ignores[1]:
        raise IncompatibleError(f"dataset {info.name!r} is described twice with different ignore values: "
                                f"{ignores[0]} vs {ignores[1]}")
    for key, task in info.tasks.items():
        if key in old.tasks and old.tasks[key].steps != task.steps:
            raise IncompatibleError(f"dataset {info.name!r}: task {key!r} is defined twice with different steps")
    merged = old.with_tasks({k: v for k, v in info.tasks.items() if k not in old.tasks})
    _REGISTRY[info.name] = merged
    return merged


def forget(name: str) -> None:
    """Drop a dataset of one's own (tests; a process that reads several roots)."""
    if name not in BUILTINS:
        _REGISTRY.pop(name, None)


def for_header(header: Mapping[str, Any]) -> DatasetInfo:
    """The dataset of a checkpoint header; a custom one is registered from the description
    the header carries."""
    described = header.get(HEADER_KEY)
    if described is not None:
        from incseg_cli.datasets.custom import info_from_description

        return register(info_from_description(described, source="the checkpoint header", root=None))
    return get(str(header.get("dataset")))


def header_entry(name: str) -> dict[str, Any]:
    """What ``make_header`` adds for dataset ``name``: a custom dataset's description (its
    classes, palette, ignore value and tasks), nothing for a built-in one."""
    info = get(name)
    if not info.custom:
        return {}
    from incseg_cli.datasets.custom import header_description

    return {HEADER_KEY: header_description(info)}


def from_root(root: str | os.PathLike | None) -> DatasetInfo | None:
    """The dataset described in ``root``'s description file (registered), or None when the
    root has no such file."""
    if root is None:
        return None
    path = Path(root) / DESCRIPTION_FILE
    if not path.is_file():
        return None
    from incseg_cli.datasets.custom import load_description

    return register(load_description(path))


def resolve(dataset: str | None, data: str | os.PathLike | None = None) -> str:
    """The dataset a stage works on: ``--dataset`` when given, else the one described in
    ``--data``'s description file, else ``voc``. A ``--dataset`` that contradicts the
    description is refused (UsageError)."""
    described = from_root(data)
    if dataset is None:
        return described.name if described is not None else "voc"
    if described is not None and dataset != described.name:
        raise UsageError(
            f"--dataset {dataset} contradicts {Path(data) / DESCRIPTION_FILE}, which describes dataset "
            f"{described.name!r}; drop --dataset or give another --data"
        )
    get(dataset)
    return dataset

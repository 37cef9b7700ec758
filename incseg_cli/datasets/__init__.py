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

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from incseg_cli.datasets.base import IGNORE_INDEX, DatasetInfo, TaskDef, bit_palette, make_palette
from incseg_cli.datasets.custom import header_description, info_from_description, load_description
from incseg_cli.datasets import orders
from incseg_cli.datasets.registry import (BUILTINS, DESCRIPTION_FILE, HEADER_KEY, builtin_names, complete_name,
                                          dataset_option, forget, get, names, register, register_order)
from incseg_cli.errors import UsageError

if TYPE_CHECKING:
    from incseg_cli.datasets.layout import DatasetLayout

__all__ = [
    "IGNORE_INDEX", "DatasetInfo", "TaskDef", "bit_palette", "make_palette", "get", "names", "builtin_names",
    "register", "forget", "for_header", "header_entry", "from_root", "resolve", "DESCRIPTION_FILE", "BUILTINS",
    "HEADER_KEY", "open_layout", "dataset_option", "complete_name", "register_order",
]

def for_header(header: Mapping[str, Any]) -> DatasetInfo:
    """The dataset of a checkpoint header (or metrics); a custom one is registered from the
    description the header carries, and so is the named class order it carries."""
    described = header.get(HEADER_KEY)
    if described is not None:
        info = register(info_from_description(described, source="the checkpoint header", root=None))
    else:
        info = get(str(header.get("dataset")))
    order = orders.from_header(info, header)  # a named class order of one's own travels too
    return register_order(info.name, *order) if order is not None else info


def header_entry(name: str) -> dict[str, Any]:
    """What ``make_header`` adds for dataset ``name``: a custom dataset's description (its
    classes, palette, ignore value and tasks), nothing for a built-in one."""
    info = get(name)
    if not info.custom:
        return {}
    return {HEADER_KEY: header_description(info)}


def from_root(root: str | os.PathLike | None) -> DatasetInfo | None:
    """The dataset described in ``root``'s description file (registered), or None when the
    root has no such file."""
    if root is None:
        return None
    path = Path(root) / DESCRIPTION_FILE
    if not path.is_file():
        return None
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


def open_layout(dataset: str, root: str | os.PathLike, label_space: str | None = None) -> "DatasetLayout":
    """Open a dataset root; ``InputError`` naming what is missing if it is not one. Masks
    are read in ``label_space``'s ids (the dataset's own by default).

    A root with a description file registers its dataset first, so a dataset of one's own
    opens by name like a built-in one."""
    if dataset not in names():
        from_root(root)
    info = get(dataset)
    if info.layout is None:
        raise UsageError(f"dataset {dataset!r} has no layout on disk")
    return info.layout(root, label_space, get(label_space or dataset).class_names)

"""The registry of datasets: the built-ins, loaded on first use, and the datasets of one's
own met so far (registered from a description file or a checkpoint header).

The built-in datasets are modules of this package found by name (``incseg_cli.datasets.voc``
exports ``INFO``), so this module imports none of them up front.
"""

from __future__ import annotations

import importlib

from typing import Any

from incseg_cli.config import option
from incseg_cli.datasets.base import DatasetInfo
from incseg_cli.errors import IncompatibleError, UsageError

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


def complete_name(incomplete: str) -> list[str]:
    """Shell completion of ``--dataset``: the registered datasets."""
    return [n for n in names() if n.startswith(incomplete)]


# --dataset beside --data: what a command that reads a dataset root says of it
DATA_DATASET_HELP = ("Dataset: voc, coco, ade, or the name of a dataset of your own (described by "
                     "DATA/incseg-dataset.json, docs/own-data.md). [default: the dataset DATA describes, else voc]")


def dataset_option(help: str = DATA_DATASET_HELP) -> Any:
    """The ``--dataset`` option of a command: a built-in or one's own dataset, by name."""
    return option(help=help, metavar="[voc|coco|ade|NAME]", complete=complete_name)


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


def register_order(dataset: str, name: str, classes: tuple[int, ...]) -> DatasetInfo:
    """Add the named class order ``classes`` (checked by ``orders.check_order``) to ``dataset``;
    the same name with another sequence is refused (IncompatibleError)."""
    info = get(dataset)
    known = info.orders.get(name)
    if known is not None:
        if tuple(known) != tuple(classes):
            raise IncompatibleError(f"dataset {dataset}: class order {name!r} is already defined with another "
                                    "sequence; rename one of them")
        return info
    merged = info.with_orders({name: tuple(classes)})
    _REGISTRY[dataset] = merged
    return merged


def forget(name: str) -> None:
    """Drop a dataset of one's own (tests; a process that reads several roots)."""
    if name not in BUILTINS:
        _REGISTRY.pop(name, None)

"""Named class orders: the sequence in which a task learns a dataset's foreground classes.

An order is a permutation of every foreground class id; a task in that order keeps its step
sizes and takes its steps' classes as consecutive slices of the sequence (``tasks.Task``,
keys ``TASK@NAME``). Within a step the classes take their channels in label-id order, as
MiB lists every step; PLOP lists its step 0 unsorted, which only moves classes between the
channels of one head.

The published orders are data of the papers' code, on their datasets (``datasets/voc.py``,
``datasets/ade.py``):

- VOC ``plop-b`` ... ``plop-w``: PLOP's ``tasks.py``, ``tasks_voc["15-5s_b"]`` ... ``["15-5s_w"]``
  (arthurdouillard/CVPR2021_PLOP): step 0's classes in PLOP's list order, then the five
  classes of steps 1..5.
- VOC ``mib-b``: MiB's ``tasks.py``, ``tasks_voc["19-1b"]`` (fcdl94/MiB): bottle last.
- ADE ``mib-b``, ``mib-c``: MiB's ``tasks_ade`` orders b and c, which are one permutation
  each across its three tasks: ``"50b"``'s steps 0 and 1, then ``"100-10b"``'s steps 1..5
  (so ``100-50@mib-b`` is ``"100-50b"``, ``100-10@mib-b`` is ``"100-10b"`` and ``50-50@mib-b``
  is ``"50b"``, as sets per step).

A file adds an order of one's own: ``{"name": "mine", "order": [class names or ids], "dataset":
"voc"}`` (``dataset`` optional), every foreground class once. A run trained in it carries the
sequence in its checkpoint header and metrics, so later stages need neither the file nor a flag.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from incseg_cli.datasets.base import DatasetInfo
from incseg_cli.datasets.custom import read_user_json
from incseg_cli.errors import IncompatibleError, InputError, UsageError

# The key of a header (and metrics) that carries a named order: {"name": ..., "classes": [...]}.
HEADER_KEY = "class_order"
PAPERS = "papers"
FILE_FORM = '{"name": ..., "order": [class names or ids]}'  # an order file, as help and errors show it
RANDOM = re.compile(r"random[:-](\d+)")
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

def check_order(info: DatasetInfo, name: str, classes: Sequence[Any], where: str) -> tuple[int, ...]:
    """``classes`` (ids or class names) as ids, checked to hold every foreground class of
    ``info`` once; InputError naming ``where`` otherwise."""
    if not NAME.fullmatch(str(name)) or RANDOM.fullmatch(str(name)) or name == PAPERS:
        raise InputError(f"{where}: class order name {name!r}: use lower-case letters, digits, '-' or '_' "
                         f"(not {PAPERS!r} or random-N, which are built in)")
    if not isinstance(classes, (list, tuple)) or not classes:
        raise InputError(f"{where}: the order is a list of class names or ids")
    ids = []
    for c in classes:
        if isinstance(c, str):
            try:
                ids.append(info.class_id(c))
            except UsageError as err:
                raise InputError(f"{where}: {err}") from None
        elif isinstance(c, int) and not isinstance(c, bool):
            ids.append(c)
        else:
            raise InputError(f"{where}: {c!r} is neither a class name nor an id")
    foreground = list(range(1, info.num_classes))
    if sorted(ids) != foreground:
        missing = sorted(set(foreground) - set(ids))
        doubled = sorted({c for c in ids if ids.count(c) > 1})
        other = sorted(set(ids) - set(foreground))
        what = "; ".join(part for part in (
            f"missing {', '.join(info.class_names[c] for c in missing[:5])}{' ...' if len(missing) > 5 else ''}"
            if missing else "",
            f"twice: {', '.join(map(str, doubled))}" if doubled else "",
            f"not foreground ids of {info.name}: {', '.join(map(str, other))}" if other else "") if part)
        raise InputError(f"{where}: order {name!r} must list each of {info.name}'s {len(foreground)} foreground "
                         f"classes once ({what})")
    return tuple(ids)


def read_order_file(info: DatasetInfo, path: Path) -> tuple[str, tuple[int, ...]]:
    """The (name, ids) of an order file ``{"name": ..., "order": [...], "dataset": ...}``."""
    d = read_user_json(Path(path), "the class order file")
    if not isinstance(d, dict) or set(d) - {"name", "order", "dataset"} or "order" not in d:
        raise InputError(f"{path}: a class order file is {FILE_FORM}")
    if d.get("dataset", info.name) != info.name:
        raise IncompatibleError(f"{path}: an order of dataset {d['dataset']!r}, not {info.name!r}")
    name = str(d.get("name", Path(path).stem))
    return name, check_order(info, name, d["order"], str(path))


def header_entry(info: DatasetInfo, name: str) -> dict[str, Any]:
    """What a checkpoint header and metrics carry for a run in the named order ``name``."""
    return {HEADER_KEY: {"name": name, "classes": list(info.orders[name])}}


def from_header(info: DatasetInfo, header: Mapping[str, Any]) -> tuple[str, tuple[int, ...]] | None:
    """The named order a checkpoint header or metrics carry (checked against ``info`` and the
    order its task key names), or None; InputError for an entry that is not one."""
    entry = header.get(HEADER_KEY)
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or set(entry) != {"name", "classes"}:
        raise InputError(f"{HEADER_KEY} is not {{\"name\": ..., \"classes\": [...]}}")
    name = str(entry["name"])
    if not str(header.get("task", "")).endswith(f"@{name}"):
        raise InputError(f"{HEADER_KEY} {name!r} is not the order of task {header.get('task')!r}")
    return name, check_order(info, name, entry["classes"], HEADER_KEY)

"""Where split files are read and written: ``--splits``, ``$INCSEG_SPLITS``, ``./splits``,
the user data directory and the splits shipped inside the package.

Separate from ``data/splits.py`` (which loads the dataset registry, numpy and the progress
bars) so that ``list-tasks`` can say where each task's splits are at little cost.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

SPLITS_ENV = "INCSEG_SPLITS"
LOCAL_SPLITS = Path("splits")


def shipped_splits_root() -> Path:
    """The split files and label tables installed with the package (``incseg_cli/splits``):
    read, never written (an install directory may be read-only or shared)."""
    return Path(str(importlib.resources.files("incseg_cli") / "splits"))


def user_splits_root() -> Path:
    """``$XDG_DATA_HOME/incseg/splits`` (``~/.local/share/incseg/splits``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "incseg" / "splits"


def writable_splits_root() -> Path:
    """Where ``prepare-splits`` writes unless told: ``$INCSEG_SPLITS``, else ``./splits`` if
    it exists, else the user data directory; all of them are read by default."""
    env = os.environ.get(SPLITS_ENV)
    if env:
        return Path(env)
    return LOCAL_SPLITS if LOCAL_SPLITS.is_dir() else user_splits_root()


def splits_search_path() -> list[Path]:
    """The roots read when no ``--splits`` is given, first match wins: ``$INCSEG_SPLITS``
    alone, else ``./splits``, the user data directory and the shipped splits."""
    env = os.environ.get(SPLITS_ENV)
    if env:
        return [Path(env)]
    return [LOCAL_SPLITS, user_splits_root(), shipped_splits_root()]


def default_splits_root(*inside: str) -> Path:
    """The first root of ``splits_search_path`` that holds ``inside`` (e.g. ``voc``,
    ``15-5``, ``task.json``; nothing: any root that exists); none holds it: the root
    ``prepare-splits`` writes to by default, which a later read finds."""
    for root in splits_search_path():
        if root.joinpath(*inside).exists():
            return root
    return writable_splits_root()


def task_splits_root(task: Any) -> Path:
    """The default root of the split files of ``task`` (a ``tasks.Task``)."""
    return default_splits_root(task.dataset, task.key, "task.json")


def suggested_out(splits_root: Path) -> Path:
    """``splits_root`` as a ``--out`` to suggest: never the installed package."""
    try:
        shipped = Path(splits_root).resolve().is_relative_to(shipped_splits_root().resolve())
    except OSError:
        shipped = False
    return writable_splits_root() if shipped else Path(splits_root)

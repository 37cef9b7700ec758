"""What a path holds, so that no output ever replaces another kind of output.

Each command writes one kind of output: a run directory, a feature bank, a rotations file
(and its resume state), an exported program, a folder of predicted masks, a metrics file.
Writing it where another kind lies is refused, ``--force`` or not (``--force`` replaces only
an output of its own kind): ``export --out OTHER_RUN/checkpoint.pt --force`` must not turn a
run into a program. A file of a run directory (``checkpoint.pt``, ``manifest.json``...) is
never another command's output, whether it exists yet or not.

What a file is comes from its content, never from its name: HDF5 or the bank's user block
for banks, the zip records of a ``torch.export`` archive for programs, the header's format
for checkpoints and rotations files (read lazily, without loading any tensor).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from incseg_cli.errors import OutputExistsError

# What makes a directory an incseg run (and so something a run's --force may replace).
RUN_MARKERS = ("manifest.json", "last.pt", "checkpoint.pt")
# Files a run directory holds; no other output is ever written in their place.
RUN_FILES = ("checkpoint.pt", "manifest.json", "metrics.json", "last.pt", "log.txt", "losses.csv", "progress.json")

RUN = "run"
CHECKPOINT = "checkpoint"
RESUME_STATE = "resume state"
BANK = "bank"
ROTATIONS = "rotations"
PROGRAM = "program"
PREDICTIONS = "predictions"
METRICS = "metrics"
TORCH = "torch file"  # a torch file that is none of incseg's kinds (or that cannot be read)
UNKNOWN = "unknown"  # anything else: incseg cannot tell what it is

# The header formats that name a torch file's kind; the modules that write them import these.
CHECKPOINT_FORMAT = "incseg-checkpoint"
ROTATIONS_FORMAT = "incseg-rotations"

DESCRIPTIONS = {
    RUN: "an incseg run",
    CHECKPOINT: "an incseg checkpoint",
    RESUME_STATE: "an incseg resume state (last.pt)",
    BANK: "a feature bank",
    ROTATIONS: "a rotations file",
    PROGRAM: "an exported program (.pt2)",
    PREDICTIONS: "the masks of incseg predict",
    METRICS: "a metrics file",
    TORCH: "a torch file that incseg did not write or cannot read",
    UNKNOWN: "a file that incseg did not write",
}

_PREDICT_RECORD = "predict.json"  # stages/predict.SETTINGS_FILE: what makes a folder predict's


def is_run_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def run_of_file(path: str | os.PathLike) -> Path | None:
    """The run directory whose file ``path`` is (or would be), else None."""
    path = Path(path)
    if path.name in RUN_FILES and is_run_dir(path.parent):
        return path.parent
    return None


def _torch_kind(path: Path) -> str:
    """Checkpoint, rotations, resume state, program, or TORCH: what a zip archive holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(name == "archive_format" or name.endswith("/archive_format") for name in names):
                return PROGRAM
            pickle_name = next((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), None)
            if pickle_name is None:
                return TORCH
            head = archive.read(pickle_name)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError):
        return TORCH
    return _pickle_kind(head)


def _pickle_kind(data: bytes) -> str:
    """The kind a torch pickle declares, read as plain data (tensors stand in as None, and any
    object that is not plain data makes it TORCH: nothing is executed)."""
    import io
    import pickle

    class _Plain(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if module == "collections" and name == "OrderedDict":
                import collections

                return collections.OrderedDict
            if module.startswith("torch"):
                return lambda *args, **kwargs: None  # a tensor or storage: not needed here
            raise pickle.UnpicklingError(f"{module}.{name}")

        def persistent_load(self, pid: object) -> None:
            return None

    try:
        obj = _Plain(io.BytesIO(data)).load()
    except Exception:  # noqa: BLE001 - damaged or foreign: a torch file of no kind of ours
        return TORCH
    header = obj.get("header") if isinstance(obj, dict) else None
    fmt = header.get("format") if isinstance(header, dict) else None
    if fmt == CHECKPOINT_FORMAT:
        return CHECKPOINT
    if fmt == ROTATIONS_FORMAT:
        return ROTATIONS
    if isinstance(obj, dict) and {"fingerprint", "optimizer", "epoch"} <= set(obj):
        return RESUME_STATE
    return TORCH


def kind_of(path: str | os.PathLike) -> str | None:
    """What ``path`` holds: one of the kinds above, or None when nothing is there (an empty
    directory counts as nothing)."""
    path = Path(path)
    if path.is_dir():
        if is_run_dir(path):
            return RUN
        if (path / _PREDICT_RECORD).is_file():
            return PREDICTIONS
        try:
            return UNKNOWN if any(os.scandir(path)) else None
        except OSError:
            return UNKNOWN
    if not path.exists():
        return None
    from incseg_cli.torchfile import LEGACY_MAGIC, ZIP_MAGIC  # here: it imports torch, status must not
    from incseg_cli.bank import looks_like_bank

    if looks_like_bank(path):
        return BANK
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(LEGACY_MAGIC))
    except OSError:
        return UNKNOWN
    if head.startswith(ZIP_MAGIC):
        return _torch_kind(path)
    if head.startswith(LEGACY_MAGIC):
        return TORCH
    return UNKNOWN


def run_inside(path: str | os.PathLike, depth: int = 4, budget: int = 5000) -> Path | None:
    """A run directory inside the directory ``path`` (``depth`` levels down, at most
    ``budget`` directories looked at), or None: what replacing ``path`` whole would delete."""
    pending = [(Path(path), 0)]
    while pending and budget > 0:
        folder, level = pending.pop()
        budget -= 1
        if level and is_run_dir(folder):
            return folder
        if level < depth:
            try:
                pending += [(Path(e.path), level + 1) for e in os.scandir(folder)
                            if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
    return None


def describe(kind: str) -> str:
    return DESCRIPTIONS.get(kind, kind)


def check_replaceable(path: str | os.PathLike, option: str, kind: str, *, unknown_ok: bool = False) -> None:
    """Refuse (``OutputExistsError``, exit 6, ``--force`` or not) to write an output of
    ``kind`` at ``path`` where that would replace or join another kind of output: a file of
    a run directory, anything of another of the kinds above and, unless ``unknown_ok``, what
    incseg cannot identify (outputs that a command always rewrites, such as evaluate's
    metrics file, pass ``unknown_ok``)."""
    path = Path(path)
    run = run_of_file(path)
    if run is not None and kind != RUN:
        raise OutputExistsError(f"{option} {path}: {path.name} is a file of the incseg run {run}, which only that "
                                f"run's own command writes; choose another {option}")
    held = kind_of(path)
    if held is None or held == kind or (held == UNKNOWN and unknown_ok):
        return
    if held == UNKNOWN:
        raise OutputExistsError(f"{path}: holds {describe(held)} as {describe(kind)}; {option} replaces only "
                                f"{describe(kind)} (--force included): remove it yourself or choose another {option}")
    raise OutputExistsError(f"{path}: holds {describe(held)}; {option} writes {describe(kind)} and never replaces "
                            f"another kind of output (--force included); choose another {option}")

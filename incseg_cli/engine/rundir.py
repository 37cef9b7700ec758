"""A run directory: checkpoint.pt, manifest.json, metrics.json, and last.pt while training.

Rerunning a command decides from the manifest what to do: a complete run with the same
options and inputs is skipped, an unfinished one resumes from ``last.pt``, anything else
needs ``--force`` (the rule is ``engine/outputs.py``'s, shared with banks and rotations
files). The decision is read-only (``decide``); the directory is touched only by
``prepare``, under the output's lock (``lock``), after everything else has been validated.
``--force`` moves the old run aside to a hidden sibling and deletes it once the new run has written
its first ``last.pt``; a new run that fails before that puts the old one back.

A run is skipped on its checkpoint, so "complete" is checked, not believed: the manifest of a
finished run records the sha256 of the ``checkpoint.pt`` it wrote, and a run whose checkpoint
is no longer that file (replaced by another file, edited, damaged) is refused with exit 5
rather than reported complete; ``--force`` trains it again.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from incseg_cli.console import log
from incseg_cli.version import __version__
from incseg_cli.engine.kinds import (  # noqa: F401 - RUN_MARKERS and RUN_FILES are read from here too
    CHECKPOINT, METRICS, PREDICTIONS, RUN_FILES, RUN_MARKERS, check_replaceable, describe, kind_of,
)
from incseg_cli.engine.lock import OutputLock, pid_alive
from incseg_cli.engine.outputs import COMPLETE, FRESH, REPLACE, RESUME, Found, decide  # noqa: F401
from incseg_cli.errors import CorruptFileError, IncsegError, OutputError, OutputExistsError, UsageError
from incseg_cli.fileio import (
    check_writable, output_errors, read_json_object, refuse_overlap, sha256_file, temp_owner, write_json,
)

# What a finished run's manifest records of its checkpoint (see the module docstring).
CHECKPOINT_SHA_KEY = "checkpoint_sha256"


def _own_leftover(name: str) -> bool:
    """A temporary file of this tool: it does not make a directory "not empty"."""
    return temp_owner(name) is not None or name.startswith(".incseg-probe-")


def library_versions() -> dict[str, str]:
    import numpy
    import torchvision

    return {
        "incseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
    }


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.replaced: Path | None = None  # the old run --force moved aside, until the new one starts

    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    manifest_path = property(lambda self: self.path / "manifest.json")
    metrics_path = property(lambda self: self.path / "metrics.json")
    last = property(lambda self: self.path / "last.pt")

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        return read_json_object(self.manifest_path, "run manifest", "; pass --force to start over")

    def _entries(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if not _own_leftover(p.name))

    def is_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_MARKERS)

    def has_progress(self) -> bool:
        """A ``last.pt``, a checkpoint or a finished epoch: work the tool never deletes."""
        if self.last.exists() or self.checkpoint.exists():
            return True
        try:
            manifest = self.read_manifest() or {}
        except CorruptFileError:
            return True  # cannot tell: keep it
        return bool(manifest.get("epochs"))

    def decide(self, fingerprint: str, force: bool) -> str:
        """FRESH, RESUME, COMPLETE or (``force`` on an existing run) REPLACE, touching
        nothing; refuses what is not ours to write."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise OutputError(f"cannot write the run directory {path}: a file is in the way")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise OutputError(f"cannot write the run directory {path}: {parent} is a file, not a directory")
                break
        if not path.exists() or not self._entries():
            return FRESH
        if not self.is_run():
            others = ", ".join(p.name for p in self._entries()[:3])
            hint = "--force replaces only incseg runs; " if force else ""
            raise OutputExistsError(f"{path}: exists and is not an incseg run ({others}...); {hint}"
                                    "choose another --out")
        if force:
            return REPLACE
        manifest = self.read_manifest()
        if manifest is None:
            if self.last.exists():  # load_last checks that it belongs to this run
                return RESUME
            raise OutputExistsError(f"{path}: holds a checkpoint.pt without manifest.json; "
                                    "pass --force to replace it or choose another --out")
        found = Found(path, exists=True, fingerprint=manifest.get("fingerprint"),
                      complete=manifest.get("status") == "complete" and self.checkpoint.is_file(),
                      what="a run", detail=f" (status {self.state_word(manifest)})")
        # load_last checks that a last.pt belongs to this run
        state = decide([found], fingerprint, False, resumable=self.last.exists())
        if state == COMPLETE:
            self.check_complete(manifest)
        return state

    def state_word(self, manifest: dict[str, Any]) -> str:
        """The run's state as ``incseg status`` would name it: a manifest still saying running
        while progress.json says the run stopped is interrupted (or failed), not running."""
        status = manifest.get("status", "?")
        if status == "running":
            try:
                progress = json.loads((self.path / "progress.json").read_text())
            except (OSError, ValueError):
                progress = None
            if isinstance(progress, dict) and progress.get("state") in ("interrupted", "failed"):
                return str(progress["state"])
        return str(status)

    def check_complete(self, manifest: dict[str, Any]) -> None:
        """Refuse (exit 5) a run recorded complete whose ``checkpoint.pt`` is not the file it
        wrote: a run is skipped on its checkpoint, so a replaced or damaged one must not pass
        for a finished run. Manifests of an older incseg record no sha256: their checkpoint
        must at least be an intact incseg checkpoint (kind and payload checksum)."""
        recorded = manifest.get(CHECKPOINT_SHA_KEY)
        if isinstance(recorded, str):
            try:
                if sha256_file(self.checkpoint) == recorded:
                    return
            except OSError as err:
                raise CorruptFileError(f"{self.checkpoint}: cannot read ({err.strerror})") from None
            reason = "it is no longer the checkpoint the run wrote (replaced, edited or damaged since)"
        else:
            held = kind_of(self.checkpoint)
            if held == CHECKPOINT:
                from incseg_cli.engine.checkpoint import load_checkpoint  # torch: status reads runs without it

                try:
                    load_checkpoint(self.checkpoint)
                    return
                except IncsegError as err:
                    reason = str(err).removeprefix(f"{self.checkpoint}: ")
            else:
                reason = f"it holds {describe(held) if held else 'nothing'}, not an incseg checkpoint"
        raise CorruptFileError(f"{self.checkpoint}: the run is recorded complete, but {reason}; "
                               "pass --force to train it again, or put its own checkpoint back")

    def lock(self) -> OutputLock:
        """The lock of this run directory: held from ``prepare`` to the last write."""
        return OutputLock(self.path)

    def prepare(self, fingerprint: str, force: bool) -> str:
        """``decide``, then make the directory (moving a run that ``force`` replaces aside).
        Call it holding the output's lock. Returns FRESH, RESUME or COMPLETE."""
        self._recover_replaced()
        state = self.decide(fingerprint, force)
        if state == REPLACE:
            aside = self.path.with_name(f".{self.path.name}.replaced-{os.getpid()}")
            with output_errors(self.path, [aside]):
                if aside.exists():
                    shutil.rmtree(aside)
                os.replace(self.path, aside)
            self.replaced = aside
            log(f"{self.path}: --force: the old run is kept as {aside.name} until the new one has written last.pt")
            state = FRESH
        if state != COMPLETE:
            try:
                with output_errors(self.path):
                    self.path.mkdir(parents=True, exist_ok=True)
            except BaseException:
                self.abandon()  # puts back a run moved aside
                raise
        return state

    def _recover_replaced(self) -> None:
        """A ``--force`` whose process died: drop the old run if the new one got going,
        else put the old one back."""
        for aside in sorted(self.path.parent.glob(f".{self.path.name}.replaced-*")):
            pid = aside.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
                continue
            if self.path.is_dir() and self.has_progress():
                shutil.rmtree(aside, ignore_errors=True)
                log(f"{self.path}: removed {aside.name}, the run an interrupted --force replaced")
            else:
                if self.path.is_dir():
                    shutil.rmtree(self.path)
                os.replace(aside, self.path)
                log(f"{self.path}: put back the run that an interrupted --force was replacing")

    def drop_replaced(self) -> None:
        """The new run has started: the run it replaces goes."""
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def abandon(self, extra: Iterable[Path] = ()) -> None:
        """After a failure: keep a run with a ``last.pt``, a checkpoint or a finished epoch;
        otherwise remove what this invocation made (the manifest and the ``extra`` files it
        writes) and put back a run ``--force`` moved aside."""
        if self.path.is_dir():
            if self.has_progress():
                self.drop_replaced()
                return
            for path in (self.manifest_path, *extra):
                path.unlink(missing_ok=True)
            for leftover in self.path.iterdir():
                if _own_leftover(leftover.name):
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            if not any(self.path.iterdir()):
                self.path.rmdir()
        if self.replaced is not None:
            if self.path.exists():  # something else appeared: keep both, say where the old run is
                log(f"{self.path}: the replaced run is kept as {self.replaced}")
            else:
                os.replace(self.replaced, self.path)
                log(f"{self.path}: put back the run --force was replacing")
            self.replaced = None

    def start_manifest(self, command: str, options: dict[str, Any], fingerprint: str,
                       inputs: dict[str, str], extra: dict[str, Any]) -> dict[str, Any]:
        previous = self.read_manifest() or {}
        manifest = {
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if command == "" else command,
            "argv": sys.argv,
            "status": "running",
            "fingerprint": fingerprint,
            "options": options,
            "inputs": inputs,
            "versions": library_versions(),
            "host": platform.node(),
            "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "epochs": previous.get("epochs", []),
            **extra,
        }
        write_json(self.manifest_path, manifest)
        return manifest

    def update_manifest(self, manifest: dict[str, Any], **changes: Any) -> None:
        """Record ``changes``; marking the run complete also records its checkpoint's sha256,
        which a later skip checks (``check_complete``)."""
        manifest.update(changes)
        if changes.get("status") == "complete" and self.checkpoint.is_file():
            manifest[CHECKPOINT_SHA_KEY] = sha256_file(self.checkpoint)
        write_json(self.manifest_path, manifest)


def run_of(path: str | Path) -> Path | None:
    """The run directory a checkpoint path belongs to (the path itself for a directory)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent if (path.parent / "manifest.json").is_file() else None


def input_paths(option: str, path: str | Path | None) -> list[tuple[str, Path]]:
    """``(option, path)`` and, for a checkpoint inside a run directory, that directory too:
    what an output may not be, contain or lie inside."""
    if path is None:
        return []
    items = [(option, Path(path))]
    run = run_of(path)
    if run is not None and run != Path(path):
        items.append((f"the run of {option}", run))
    return items


def check_side_outputs(source: str | Path, outputs: Iterable[tuple[Any, ...]]) -> None:
    """Before a command that reads the run or checkpoint ``source`` does any work: each of
    ``outputs`` (``(option, path, is_directory[, kind])``) can be written, and is neither
    ``source``, nor its run directory, nor one of that run's files, nor contains them
    (writing beside them, inside the run directory, is fine); nor is it any other run
    directory, a file of one, or another kind of incseg output (``engine/kinds.py``; the
    kind is, unless given, predict's masks for a directory and a metrics file for a file)."""
    source = Path(source)
    run = run_of(source)
    if run == source:
        protected = [("the run", run)]
    else:
        protected = [("the checkpoint", source)] + ([("the run", run)] if run is not None else [])
    for option, path, directory, *kind in outputs:
        if path is None:
            continue
        path = Path(path)
        refuse_overlap(path, option, protected, inside_ok=("the run",))
        if run is not None and path.resolve().parent == run.resolve() and path.name in RUN_FILES:
            raise UsageError(f"{option} {path} is a file of the run {run}; choose another {option}")
        check_replaceable(path, option, kind[0] if kind else PREDICTIONS if directory else METRICS, unknown_ok=True)
        check_writable(path, option, directory=directory)

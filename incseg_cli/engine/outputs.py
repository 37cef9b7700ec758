"""What a stage writes, decided in one place: the recipe's fingerprint, skip / resume / fresh
/ ``--force``, the lock, and the options recorded with the result.

An output is either a run directory (``engine/rundir.py``: ``manifest.json`` records the
fingerprint) or files written atomically beside each other (``FileOutputs``: feature banks
and rotations files carry their fingerprint in their own header). Either way a rerun reads
what the outputs hold (``Found``) and ``decide`` says what to do:

- every output there, with this fingerprint and finished: COMPLETE (the stage skips);
- some missing or unfinished, all with this fingerprint: RESUME when the stage left a resume
  state, else FRESH;
- any output holding something else: refused unless ``--force`` (REPLACE), and refused even
  with it when that is another kind of output (``engine/kinds.py``: a bank never replaces a
  checkpoint, a run's file or anything incseg did not write as a bank).

The fingerprint hashes the recorded options minus the volatile ones (declared with
``config.option(volatile=True)``: workers, device, output paths...) and the inputs' hashes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from incseg_cli import config
from incseg_cli.engine.kinds import RESUME_STATE, check_replaceable, describe, kind_of
from incseg_cli.engine.lock import locked
from incseg_cli.errors import OutputExistsError
from incseg_cli.fileio import check_writable, refuse_overlap, remove_stale_temps, sha256_json

FRESH, RESUME, COMPLETE, REPLACE = "fresh", "resume", "complete", "replace"


def fingerprint(options: Mapping[str, Any], inputs: Mapping[str, str], volatile: Iterable[str]) -> str:
    """Hash of what determines the result: options (minus volatile ones) and input hashes."""
    volatile = set(volatile)
    kept = {k: v for k, v in options.items() if k not in volatile}
    return sha256_json({"options": kept, "inputs": dict(inputs)})


@dataclass(frozen=True)
class Recipe:
    """What made an output: the recorded options of a stage's typed option objects, the
    hashes of its input files, and the fingerprint of both."""

    options: dict[str, Any]
    inputs: dict[str, str]
    fingerprint: str

    @classmethod
    def of(cls, objs: Sequence[Any], inputs: Mapping[str, str]) -> "Recipe":
        """``objs``: the stage's option objects (``config.option`` dataclasses, ``None`` skipped)."""
        objs = [o for o in objs if o is not None]
        options = config.flat(*objs)
        return cls(options, dict(inputs), fingerprint(options, inputs, config.unfingerprinted(*objs)))


@dataclass(frozen=True)
class Found:
    """What one output path holds now, as the decision sees it."""

    path: Path
    exists: bool
    fingerprint: str | None = None  # recorded by what wrote it; None: none (not something of ours)
    complete: bool = True  # finished (a run directory may hold an unfinished run)
    what: str = "an output"  # names it in a refusal: "a run", "a feature bank"...
    detail: str = ""  # said after it, e.g. " (status running)"


def decide(found: Sequence[Found], fingerprint: str, force: bool, *, resumable: bool = False,
           advice: str = "pass --force to replace it or choose another --out") -> str:
    """FRESH, RESUME, COMPLETE, or REPLACE (``force`` with something there); touches nothing.

    ``resumable``: the stage left a resume state (``last.pt``) to continue from; it is
    checked against the fingerprint by whoever loads it."""
    present = [f for f in found if f.exists]
    if force:
        return REPLACE if present else FRESH
    for f in present:
        if f.fingerprint != fingerprint:
            other = " with other options or inputs" if f.fingerprint is not None else ""
            raise OutputExistsError(f"{f.path}: holds {f.what}{other}{f.detail}; {advice}")
    if present and len(present) == len(found) and all(f.complete for f in present):
        return COMPLETE
    return RESUME if resumable else FRESH


@dataclass(frozen=True)
class FileOutput:
    """One file a stage writes atomically, named by its option (``--out``), with the reader
    of what a file at that path holds and the kind of output it is (``engine/kinds.py``:
    only an output of that kind is ever replaced)."""

    option: str
    path: Path
    read: Callable[[Path], Found]
    kind: str | None = None


class FileOutputs:
    """The files one stage writes (banks, rotations), each written atomically, and the
    stage's resume state beside them (``<out>.last.pt``), if any.

    ``check`` (before any work) refuses outputs that are, contain or lie inside an input,
    or that cannot be written; ``with outputs.open(fingerprint) as state:`` locks every
    output from the decision to the last rename and says what to do (FRESH, RESUME or
    COMPLETE); a ``--force`` rerun first drops a stale resume state (the outputs themselves
    are replaced by the atomic renames at the end)."""

    def __init__(self, outputs: Sequence[FileOutput], force: bool, resume: Path | None = None,
                 advice: str = "pass --force to replace it or choose another path") -> None:
        self.outputs = list(outputs)
        self.force = force
        self.resume = resume
        self.advice = advice

    def check(self, sources: Sequence[tuple[str, Any]], inside_ok: Sequence[str] = ()) -> None:
        """Each output against the inputs ``sources`` (``(option, path)``) and the outputs
        before it, against what it would replace (an output of another kind, ``--force``
        or not), then whether it can be written."""
        earlier: list[tuple[str, Any]] = []
        for out in self.outputs:
            refuse_overlap(out.path, out.option, [*sources, *earlier], inside_ok=inside_ok)
            earlier.append((out.option, out.path))
        if self.resume is not None:
            refuse_overlap(self.resume, f"the resume state {self.resume.name}", [*sources, *earlier],
                           inside_ok=inside_ok)
            held = kind_of(self.resume)
            if held not in (None, RESUME_STATE):  # --force deletes it: only a resume state may be there
                option = self.outputs[-1].option
                raise OutputExistsError(f"{self.resume}: holds {describe(held)}, where the resume state of {option} "
                                        f"goes; choose another {option}")
        for out in self.outputs:
            if out.kind is not None:
                check_replaceable(out.path, out.option, out.kind)
            check_writable(out.path, out.option)

    def found(self) -> list[Found]:
        return [out.read(out.path) if out.path.exists() else Found(out.path, exists=False) for out in self.outputs]

    def decide(self, fingerprint: str) -> str:
        """FRESH, RESUME, COMPLETE or REPLACE, touching nothing."""
        resumable = self.resume is not None and self.resume.exists()
        return decide(self.found(), fingerprint, self.force, resumable=resumable, advice=self.advice)

    @contextmanager
    def open(self, fingerprint: str) -> Iterator[str]:
        """Lock every output, decide under the lock: FRESH, RESUME or COMPLETE."""
        with locked(*(out.path for out in self.outputs)):
            if self.resume is not None:  # locking the outputs cleaned theirs
                remove_stale_temps(self.resume)
            state = self.decide(fingerprint)
            if state == REPLACE:
                if self.resume is not None:
                    self.resume.unlink(missing_ok=True)
                state = FRESH
            yield state

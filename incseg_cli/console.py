"""Logs and progress on stderr; stdout is kept for data (``--json``).

Progress bars are drawn only on rank 0 and only when stderr is a terminal; elsewhere a
long loop logs a plain line now and then, with its rate and time left, so that CI logs and
``2> file`` stay readable. A stage tees what it logs into a file of its output
(``log_file``: ``log.txt`` in a run directory, ``<file>.log`` beside a file output), with
timestamps, appended across resumes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from incseg_cli import errors as e
from incseg_cli.errors import IncsegError, Interrupted, LockedError

T = TypeVar("T")

class _Console(Console):
    """rich's console, except when its reader goes away (``incseg train-base ... 2>&1 | head``):
    rich then exits with ``SystemExit(1)`` wherever the stage was; here the stream goes to
    /dev/null and the stage stops as after SIGTERM (what SIGPIPE would have meant), so
    training writes last.pt at the next iteration boundary and exits 130 with its log file
    and progress.json saying "interrupted"."""

    def on_broken_pipe(self) -> None:
        if not _reader_gone:  # no stop handling installed (a library user): rich's own exit
            super().on_broken_pipe()
            return
        self.quiet = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.file.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no file descriptor (a test's capture)
            pass
        for handler in _reader_gone:
            handler(signal.SIGPIPE)


# Who hears that the reader of stderr went away: incseg_cli.signals registers its stop request
# (it logs through this module, so this module cannot import it).
_reader_gone: list[Callable[[int], None]] = []


def on_reader_gone(handler: Callable[[int], None]) -> None:
    _reader_gone.append(handler)


stderr = _Console(stderr=True, highlight=False, soft_wrap=True)

# Files that every logged line is also written to (``log_file``), innermost last.
_tees: list["_LogTee"] = []


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def timestamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class _LogTee:
    """One log file. Its first line (the command) is written with the first logged line, so
    a command refused before it logs anything (e.g. by another process's lock on the same
    output) adds nothing to a log another process is writing."""

    def __init__(self, fh: IO[str], header: str) -> None:
        self.fh = fh
        self.header: str | None = header
        self.broken = False

    def write(self, message: str) -> None:
        if self.broken:
            return
        stamp = timestamp()
        lines = message.splitlines() or [""]
        if self.header is not None:
            lines, self.header = [self.header, *lines], None
        try:
            self.fh.write("".join(f"{stamp} {line}\n" for line in lines))
            self.fh.flush()
        except OSError as err:
            # A full disk stops the stage at its next output, with that output's error; the
            # log must not replace that error (it is written while the error is handled).
            self.broken = True
            stderr.print(f"warning: {getattr(self.fh, 'name', 'the log file')}: cannot be written "
                         f"({err.strerror or err}); the log stops here", style="bold yellow", markup=False)


def _tee(message: str) -> None:
    for tee in _tees:
        tee.write(message)


def log(message: str) -> None:
    if is_main_process():
        stderr.print(message, markup=False)
        _tee(message)


def warn(message: str) -> None:
    if is_main_process():
        stderr.print(f"warning: {message}", style="bold yellow", markup=False)
        _tee(f"warning: {message}")


def command_line() -> str:
    return " ".join(["incseg", *sys.argv[1:]])


def _refusal(err: BaseException) -> bool:
    """``err`` refused the command before it did anything (bad options or inputs)."""
    return isinstance(err, (e.UsageError, e.InputError, e.IncompatibleError, e.CorruptFileError,
                            e.OutputExistsError))


def _ending(err: BaseException) -> str:
    """The line the CLI prints for ``err`` (see ``cli.main``), for the log file."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = lines[-1] if lines else ""
    if isinstance(err, Interrupted):
        return f"interrupted: {detail}"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted: rerun the same command to resume"
    if isinstance(err, IncsegError):
        return f"error: {detail}"
    return f"error: internal error ({type(err).__name__}: {detail})"


@contextlib.contextmanager
def _closed_quietly(fh: IO[str]) -> Iterator[IO[str]]:
    """``fh`` closed after the block; a close that cannot flush (a full disk) is the tee's
    warning already, not a new error."""
    try:
        yield fh
    finally:
        try:
            fh.close()
        except OSError:
            pass


@contextlib.contextmanager
def log_file(path: str | Path | None, remove_refused: bool = True) -> Iterator[Path | None]:
    """While the block runs, also write every ``log``/``warn`` line to ``path`` with a
    timestamp (appended: a resumed run continues its log), starting with the command line
    and ending with the error that stopped the block, if one did. A log this block started
    is removed again when bad options or inputs refused the command: a refused command
    leaves no file behind (``remove_refused`` False: the caller decides, as a training run
    that keeps its ``last.pt`` keeps its log). Rank 0 only; ``None`` does nothing."""
    if path is None or not is_main_process():
        yield None if path is None else Path(path)
        return
    path = Path(path)
    created = not path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a", encoding="utf-8")
    except OSError:  # an unwritable output is the stage's to report (exit 9), after its checks
        yield path
        return

    refused = False
    tee = _LogTee(fh, f"$ {command_line()}  (pid {os.getpid()} on {platform.node()})")
    with _closed_quietly(fh):
        _tees.append(tee)
        try:
            yield path
        except BaseException as err:
            refused = remove_refused and created and (_refusal(err) or isinstance(err, LockedError))
            silent = isinstance(err, LockedError) and tee.header is not None
            if not isinstance(err, (SystemExit, GeneratorExit)) and not silent:
                tee.write(_ending(err))
            raise
        finally:
            _tees.remove(tee)
            if refused:
                path.unlink(missing_ok=True)


def logs_beside(option: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a stage ``fn(opts, ...)`` whose output is the file ``opts.<option>`` (its
    typed options): what it logs also goes to ``<that file>.log``."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def run(given: Any, *args: Any, **kwargs: Any) -> T:
            with log_file(RunFiles.of(getattr(given, option), directory=False).log):
                return fn(given, *args, **kwargs)

        return run

    return decorate


@dataclass(frozen=True)
class RunFiles:
    """Where a stage's log, loss table and progress go: inside its run directory
    (``log.txt``, ``losses.csv``, ``progress.json``), or beside its output file
    (``<file>.log``, ``<file>.losses.csv``, ``<file>.progress.json``)."""

    log: Path
    losses: Path
    progress: Path

    @classmethod
    def of(cls, output: str | Path, directory: bool) -> "RunFiles":
        output = Path(output)
        if directory:
            return cls(output / "log.txt", output / "losses.csv", output / "progress.json")
        return cls(*(output.with_name(output.name + suffix) for suffix in SIDECAR_SUFFIXES))


SIDECAR_SUFFIXES = (".log", ".losses.csv", ".progress.json")


def duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _interactive() -> bool:
    return is_main_process() and sys.stderr.isatty() and not os.environ.get("INCSEG_NO_PROGRESS")


def _plain_every() -> float:
    """Seconds between plain progress lines (``INCSEG_PROGRESS_EVERY``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("INCSEG_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return Text("?" if speed is None else f"{speed:.2f} {unit}/s")


# One live display holds every open bar (rich allows one at a time): a validation bar
# opened inside the training bar becomes a second line under it.
_live: Progress | None = None
_live_bars = 0


class ProgressBar:
    """A rich bar on a terminal (count, rate, elapsed, time left), a plain line every
    ``log_every`` seconds otherwise with the same figures. ``done`` is work finished before
    this bar opened (a resumed run): it counts toward the total, not toward the rate."""

    def __init__(self, total: int, description: str, log_every: float | None = None, done: int = 0,
                 unit: str = "it") -> None:
        self.total = total
        self.description = description
        self.log_every = _plain_every() if log_every is None else log_every
        self.done = done
        self.unit = unit
        self.postfix = ""
        self._start_done = done
        self._started = self._last_log = time.monotonic()
        self._task = None
        self._open = False

    def __enter__(self) -> "ProgressBar":
        global _live, _live_bars
        self._started = self._last_log = time.monotonic()
        self._start_done = self.done
        if _interactive():
            if _live is None:
                _live = Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    _RateColumn(),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    TextColumn("{task.fields[postfix]}"),
                    console=stderr,
                    transient=True,
                )
                _live.start()
            _live_bars += 1
            self._task = _live.add_task(self.description, total=self.total, completed=self.done, postfix="",
                                        unit=self.unit)
        self._open = True
        return self

    def rate(self) -> float | None:
        """Units per second since the bar opened."""
        elapsed = time.monotonic() - self._started
        work = self.done - self._start_done
        return work / elapsed if work > 0 and elapsed > 0 else None

    def eta(self) -> float | None:
        """Seconds left at the rate so far."""
        rate = self.rate()
        return max(self.total - self.done, 0) / rate if rate else None

    def line(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = self.rate()
        figures = f"{rate:.2f} {self.unit}/s, ETA {duration(self.eta())}" if rate else "rate ?"
        postfix = f", {self.postfix}" if self.postfix else ""
        return f"{self.description}: {self.done}/{self.total}{pct}, {figures}{postfix}"

    def describe(self, description: str) -> None:
        self.description = description
        if self._task is not None and _live is not None:
            _live.update(self._task, description=description)

    def advance(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        if self._task is not None and _live is not None:
            _live.update(self._task, advance=n, postfix=self.postfix)
        if not is_main_process() or time.monotonic() - self._last_log < self.log_every:
            return
        self._last_log = time.monotonic()
        if self._task is not None:
            _tee(self.line())  # the terminal has the bar; the log file gets the line
        else:
            log(self.line())

    def close(self) -> None:
        global _live, _live_bars
        if not self._open:
            return
        self._open = False
        if self._task is not None and _live is not None:
            _live.remove_task(self._task)
            self._task = None
            _live_bars -= 1
            if _live_bars == 0:
                _live.stop()
                _live = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    with ProgressBar(total, description) as bar:
        for item in items:
            yield item
            bar.advance()

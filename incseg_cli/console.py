"""Logs and progress on stderr; stdout is kept for data (``--json``).

Progress bars are drawn only on rank 0 and only when stderr is a terminal; elsewhere a
long loop logs a plain line now and then so that CI logs and ``2> file`` stay readable.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def log(message: str) -> None:
    if is_main_process():
        stderr.print(message, markup=False)


def warn(message: str) -> None:
    if is_main_process():
        stderr.print(f"warning: {message}", style="bold yellow", markup=False)


def _interactive() -> bool:
    return is_main_process() and sys.stderr.isatty() and not os.environ.get("INCSEG_NO_PROGRESS")


class ProgressBar:
    """A rich bar on a terminal, a line every ``log_every`` seconds otherwise."""

    def __init__(self, total: int, description: str, log_every: float = 30.0) -> None:
        self.total = total
        self.description = description
        self.log_every = log_every
        self.done = 0
        self.postfix = ""
        self._last_log = time.monotonic()
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "ProgressBar":
        if _interactive():
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[postfix]}"),
                console=stderr,
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, postfix="")
        return self

    def advance(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        if self._progress is not None:
            self._progress.update(self._task, advance=n, postfix=self.postfix)
        elif is_main_process() and time.monotonic() - self._last_log >= self.log_every:
            self._last_log = time.monotonic()
            log(f"{self.description}: {self.done}/{self.total} {self.postfix}".rstrip())

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    with ProgressBar(total, description) as bar:
        for item in items:
            yield item
            bar.advance()

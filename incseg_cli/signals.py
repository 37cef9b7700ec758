"""SIGINT, SIGTERM and SIGUSR1: what a cluster, systemd or a Ctrl-C sends, handled in one place.

Only the main process of a command handles them. DataLoader workers ignore all three, so
that a signal sent to the whole process group (SLURM's ``scancel``, systemd, Kubernetes,
Ctrl-C in a terminal) reaches the main process alone instead of killing the workers under
it; they are forked with the signals blocked, so not even one that arrives while they start
can reach them. Scan pools ignore Ctrl-C and SIGUSR1 and keep SIGTERM, with which their
pool stops them.

In the main process:
- outside a training loop, SIGINT and SIGTERM raise ``Stop`` (a ``KeyboardInterrupt``) at
  once, so every ``finally`` removes its temporary files and the command exits 130;
- inside ``deferred()`` (a training loop), the first one only sets a flag that the loop
  polls at every iteration boundary, where it writes ``last.pt`` and exits 130; a second
  Ctrl-C raises ``Stop`` at once, a repeated SIGTERM is ignored (torchrun forwards the one
  its process group got; SLURM, systemd and Kubernetes follow up with SIGKILL anyway);
- SIGUSR1 (SLURM's ``--signal`` warning before pre-emption) asks the loop to write
  ``last.pt`` at the next iteration boundary and go on; outside a loop it is only noted.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator

import torch

from incseg_cli.console import log

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SAVE_SIGNAL = signal.SIGUSR1
HANDLED = (*STOP_SIGNALS, SAVE_SIGNAL)


class Stop(KeyboardInterrupt):
    """A stop signal outside a training loop (or a second one inside it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name}; rerun the same command to continue "
                         "(finished work is kept, temporary files were removed)")


class _State:
    stop: int | None = None  # the first stop signal received
    save: bool = False  # a SIGUSR1 not yet served
    deferring: int = 0  # depth of ``deferred()`` blocks


_state = _State()


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _handler(signum: int, frame: Any) -> None:
    if signum == SAVE_SIGNAL:
        if not _state.deferring:
            log(f"{_name(signum)}: no training loop is running, nothing to save")
        elif not _state.save:
            _state.save = True
            log(f"{_name(signum)}: writing last.pt at the next iteration boundary, training goes on")
        return
    if _state.stop is not None and signum != signal.SIGINT:
        # Already stopping. A SIGTERM comes twice when torchrun forwards the one its process
        # group got; it must not cut short the save or the clean-up under way.
        return
    if _state.deferring and _state.stop is None:
        _state.stop = signum
        log(f"{_name(signum)}: stopping at the next iteration boundary and writing last.pt "
            "(Ctrl-C again to stop at once)")
        return
    _state.stop = _state.stop or signum
    raise Stop(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install() -> dict[int, Any]:
    """The process-wide handlers; the CLI calls this first thing. Returns the previous ones
    (``restore`` puts them back, for a caller that runs the CLI in its own process)."""
    previous: dict[int, Any] = {}
    if _main_thread():
        for sig in HANDLED:
            previous[sig] = signal.signal(sig, _handler)
    _state.stop, _state.save = None, False
    return previous


def restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that stops only at the points that call ``stop_requested()``. A stop signal
    still pending when the block ends normally is raised then, so it is never lost. Installs
    the handlers for the block when the CLI did not (a library caller) and puts back the
    previous ones after."""
    previous: dict[int, Any] = {}
    if _main_thread():
        for sig in HANDLED:
            if signal.getsignal(sig) is not _handler:
                previous[sig] = signal.signal(sig, _handler)
    if _state.deferring == 0:
        _state.stop, _state.save = None, False
    _state.deferring += 1
    try:
        yield
        if _state.deferring == 1 and _state.stop is not None:
            raise Stop(_state.stop)
    finally:
        _state.deferring -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_requested() -> int | None:
    """The stop signal received inside ``deferred()``, if any."""
    return _state.stop


def take_save_request() -> bool:
    """Whether a SIGUSR1 asked for ``last.pt`` since the last call."""
    asked, _state.save = _state.save, False
    return asked


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Act as if ``signum`` had arrived (what a test or an embedding program calls)."""
    _handler(signum, None)


# -- worker processes -----------------------------------------------------------------------------
@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Signals are held back while the block forks workers; they arrive after it."""
    if not _main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, set(HANDLED))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_in_worker(worker_id: int | None = None) -> None:
    """A DataLoader worker's ``worker_init_fn``: the main process alone handles the signals
    and shuts its workers down."""
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(HANDLED))


def pool_worker_init() -> None:
    """A process pool's initializer: ignore Ctrl-C and SIGUSR1 (no traceback per worker), but
    let SIGTERM end the worker, which is how ``Pool.terminate`` stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(SAVE_SIGNAL, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(HANDLED))


def _chain(first: Callable[[int], None], then: Callable[[int], None] | None) -> Callable[[int], None]:
    if then is None:
        return first
    return _Chained(first, then)


class _Chained:
    """Picklable (spawn start method) ``worker_init_fn`` that runs two functions."""

    def __init__(self, first: Callable[[int], None], then: Callable[[int], None]) -> None:
        self.first, self.then = first, then

    def __call__(self, worker_id: int) -> None:
        self.first(worker_id)
        self.then(worker_id)


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose workers ignore the stop signals and are forked with them blocked."""

    def __init__(self, *args: Any, worker_init_fn: Callable[[int], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=_chain(ignore_in_worker, worker_init_fn), **kwargs)

    def _get_iterator(self) -> Any:
        with blocked():
            return super()._get_iterator()

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

import atexit
import contextlib
import re
import signal
import threading
import time
import weakref
from typing import Any, Callable, Iterator

from incseg_cli.console import log, on_reader_gone
from incseg_cli.errors import IncsegError

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


# A closed stdout or stderr (``incseg ... | head``) stops the stage as SIGPIPE would have.
on_reader_gone(request_stop)


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


# -- loader workers ------------------------------------------------------------------------------
WORKER_GRACE_S = 2.0  # what ended workers get to leave on their own before SIGKILL

# Iterators whose workers may still run. Ended explicitly, never by torch: its shutdown
# SIGTERMs the workers, which ignore it (see above), and its SIGCHLD handler raises
# "DataLoader worker ... killed" from wherever the main process then is.
_live_iterators: "weakref.WeakSet[Any]" = weakref.WeakSet()
_atexit_registered = False


def _track(iterator: Any) -> None:
    global _atexit_registered
    if not getattr(iterator, "_workers", None):
        return
    _live_iterators.add(iterator)
    if not _atexit_registered:
        # Registered after multiprocessing's own hook, so it runs before it: that hook
        # SIGTERMs daemonic children and waits for them, for ever when they ignore it.
        atexit.register(end_loader_workers)
        _atexit_registered = True


def _end_iterator(iterator: Any) -> None:
    if getattr(iterator, "_shutdown", True):
        return
    # torch's own shutdown (the iterator's __del__, its atexit hook) is a no-op from here on.
    iterator._shutdown = True
    _live_iterators.discard(iterator)
    from torch.utils.data._utils import signal_handling

    # Forgotten before any of them is killed: for a registered worker that dies by a signal,
    # torch's SIGCHLD handler raises in the main process, wherever it is.
    if getattr(iterator, "_worker_pids_set", False):
        iterator._worker_pids_set = False
        with contextlib.suppress(RuntimeError):
            signal_handling._remove_worker_pids(id(iterator))
    workers = list(getattr(iterator, "_workers", []))
    queues = list(getattr(iterator, "_index_queues", []))
    pinning = getattr(iterator, "_pin_memory_thread", None)
    if pinning is not None:
        iterator._pin_memory_thread_done_event.set()
        with contextlib.suppress(Exception):
            iterator._worker_result_queue.put((None, None))
        pinning.join(timeout=WORKER_GRACE_S)
    done = getattr(iterator, "_workers_done_event", None)
    if done is not None:
        done.set()
    for q in queues:  # a worker leaves when it reads None
        with contextlib.suppress(Exception):
            q.put(None)
    deadline = time.monotonic() + WORKER_GRACE_S
    for worker in workers:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=WORKER_GRACE_S)
    for q in queues:
        with contextlib.suppress(Exception):
            q.cancel_join_thread()
            q.close()
    if pinning is not None:
        with contextlib.suppress(Exception):
            iterator._worker_result_queue.cancel_join_thread()
            iterator._worker_result_queue.close()


def end_loader_workers(iterator: Any = None) -> None:
    """End the workers of a loader iterator (None: of every one still running): each gets
    ``WORKER_GRACE_S`` to leave, then SIGKILL. Signals wait until it is done, so that a
    Ctrl-C cannot leave a worker half-ended."""
    with blocked():
        for it in [iterator] if iterator is not None else list(_live_iterators):
            _end_iterator(it)


def worker_message(err: BaseException) -> BaseException:
    """``err`` with the message its worker raised it with. torch re-raises a worker's
    exception with the worker's whole traceback as the message (``Caught X in DataLoader
    worker process N ... module.X: message``); a multi-line message stays whole."""
    text = str(err)
    if not text.startswith("Caught ") or "in DataLoader worker process" not in text:
        return err
    kind = type(err)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    at = text.rfind(f"\n{name}: ")
    if at >= 0:
        err.args = (text[at + len(name) + 3:].removesuffix("\n"),)  # the traceback's own line end
        if hasattr(err, "add_note"):  # Python 3.11+: INCSEG_DEBUG's traceback keeps the worker's
            err.add_note(text)
    return err


def worker_death(err: BaseException) -> IncsegError | None:
    """torch's RuntimeError for a worker that died without an exception of its own (killed
    when memory ran out, a crash in an image library, shared memory exhausted) as an incseg
    error (exit 1): the machine's trouble, not a bug of incseg. None for any other error."""
    text = " ".join(str(err).split())
    if not isinstance(err, RuntimeError) or "DataLoader worker (pid" not in text:
        return None
    what = re.search(r"DataLoader worker \(pid[^)]*\) [^.]*", text)
    hint = "; its shared memory (/dev/shm) may be full" if "shared memory" in text else ""
    return IncsegError(f"a data-loading worker process died ({what.group() if what else text[:200]}){hint}; "
                       "rerun with --workers 0 to see the file it was reading, or with fewer workers or a smaller "
                       "--batch-size if memory ran out")


class _Batches:
    """A loader's iterator that ends its workers the moment one of them fails (or the wait
    for one is interrupted), and raises the worker's own error."""

    def __init__(self, loader: Any, inner: Any) -> None:
        self.loader, self.inner = loader, inner

    def __iter__(self) -> "_Batches":
        return self

    def __len__(self) -> int:
        return len(self.inner)

    def __next__(self) -> Any:
        try:
            return next(self.inner)
        except StopIteration:
            raise
        except BaseException as err:
            if getattr(self.loader, "_iterator", None) is self.inner:
                self.loader._iterator = None  # a later iter(loader) starts fresh workers
            try:
                end_loader_workers(self.inner)
            except Exception:  # the CLI ends what is left; the worker's error is the one to tell
                pass
            died = worker_death(err)
            if died is not None:
                raise died from None
            raise worker_message(err)


def _loader_class() -> type:
    import torch

    class Loader(torch.utils.data.DataLoader):
        """The DataLoader of every stage (train, eval, predict, bank, pre-pass). Its workers
        ignore the stop signals and are forked with them blocked; a failing worker ends all
        of them and its error is raised with its own message (the CLI's one line and exit
        code); the workers left at exit are ended (``end_loader_workers``)."""

        def __init__(self, *args: Any, worker_init_fn: Callable[[int], None] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, worker_init_fn=_chain(ignore_in_worker, worker_init_fn), **kwargs)

        def _get_iterator(self) -> Any:
            with blocked():
                iterator = super()._get_iterator()
            _track(iterator)
            return iterator

        def __iter__(self) -> Any:
            return _Batches(self, super().__iter__())

    Loader.__qualname__ = "Loader"
    return Loader


def __getattr__(name: str) -> Any:
    # ``Loader`` is built on first use: every command installs the handlers of this module,
    # and --help, status or list-tasks must not pay for importing torch.
    if name == "Loader":
        globals()["Loader"] = loader = _loader_class()
        return loader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Command-line entry point: thin commands that parse, validate and call library code.

``main`` turns every user error into one line on stderr and its documented exit code.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import signal
import sys
from typing import NoReturn

import typer

from incseg_cli.cli.app import app, lazy_commands
from incseg_cli import signals
from incseg_cli.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    ForwardedError,
    IncsegError,
    Interrupted,
)
from incseg_cli.fileio import ALWAYS_OUTPUT_ERRNOS, output_error

# Command modules register themselves on ``app`` when imported: ``typer.main.get_command(app)``
# imports them all, ``main`` only the one that runs (``cli/app.py``).


# typer vendors click in some releases and depends on it in others: find its base class.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
# click turns KeyboardInterrupt into its own Abort when not in standalone mode.
_CLICK_ABORT = getattr(sys.modules[_CLICK_EXCEPTION.__module__], "Abort", typer.Abort)


# Advice torch appends to its compiler errors, after the line that says what went wrong.
_TORCH_BOILERPLATE = ("Set TORCHDYNAMO_VERBOSE=1", "For even more developer context", "You can suppress this exception")


# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_WORKER_ERROR = re.compile(r"^incseg_cli\.errors\.\w+: ", re.M)


def _escaped(text: str) -> str:
    """Control characters written as escapes (a newline as ``\\n``): a name holding one (a
    class, a file) cannot split the error line, hide its start or drive the terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _one_line(text: str, whole: bool = False) -> str:
    """One line of a message. ``whole``: all of it, line breaks escaped (an incseg error names
    the file first and the problem after, and a name may hold a newline); otherwise its last
    line (a foreign exception's, where the cause comes last). Torch's advice lines are
    dropped; an error re-raised from a DataLoader worker that is not ours carries the
    worker's traceback, ending in ``incseg_cli.errors.InputError: <message>``."""
    text = str(text).strip()
    markers = list(_WORKER_ERROR.finditer(text)) if text.startswith("Caught ") else []
    if markers:
        text = text[markers[-1].end():]
    kept = [line for line in text.split("\n") if line.strip() and not line.strip().startswith(_TORCH_BOILERPLATE)]
    if whole:
        return _escaped("\n".join(line.rstrip() for line in kept))
    lines = [line.strip() for line in "\n".join(kept).splitlines() if line.strip()]
    return _escaped(_WORKER_ERROR.sub("", lines[-1] if lines else ""))


def _speaks() -> bool:
    """Under torchrun rank 0 alone reports an interruption: every rank stopped alike."""
    return int(os.environ.get("RANK", "0")) == 0


def _interrupted(err: BaseException | None) -> NoReturn:
    detail = _one_line(str(err)) if err is not None else ""
    if _speaks():
        print(f"interrupted: {detail or 'rerun the same command to continue'}", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def _fail(err: IncsegError) -> NoReturn:
    if isinstance(err, Interrupted):
        _interrupted(err)
    if not isinstance(err, ForwardedError):  # rank 0 reports it
        print(f"error: {_one_line(str(err), whole=True)}", file=sys.stderr)
    sys.exit(err.exit_code)


def _fail_usage(err: Exception) -> NoReturn:
    """A command-line mistake click found: one line naming the option, and where help is."""
    message = _one_line(err.format_message()).replace("Value error, ", "")
    ctx = getattr(err, "ctx", None)
    # the command as a user types it (in-process callers' argv[0] is not ``incseg``)
    names, c = [], ctx
    while c is not None and c.parent is not None:
        names.insert(0, c.info_name)
        c = c.parent
    command = " ".join(["incseg", *names])
    hint = f" (see {command} --help)" if ctx is not None and getattr(err, "exit_code", 1) == 2 else ""
    print(f"error: {message}{hint}", file=sys.stderr)
    sys.exit(getattr(err, "exit_code", 2))


def _end_workers() -> None:
    """The command is over (its outputs written or cleaned up): end the DataLoader workers a
    failure left behind. A failure's traceback keeps their iterator alive to the end of the
    interpreter, where multiprocessing would SIGTERM them, which they ignore (signals.py),
    and wait for ever."""
    if "torch" in sys.modules:  # no loader without it; a light command need not import it
        # Loader workers first, the way that keeps torch's SIGCHLD handler quiet.
        signals.end_loader_workers()
    for child in multiprocessing.active_children():
        child.kill()
        child.join(timeout=10)
    gc.collect()  # and their iterators, which then find nothing to wait for


def _emulate_cuda_if_asked() -> None:
    """``INCSEG_EMULATE_CUDA=N[,MAJOR.MINOR]``: the test harness that makes this process see N
    GPUs while tensors stay on the CPU (``incseg_cli/testing/cuda.py``); said on stderr so
    that nobody takes its output for a GPU run."""
    if os.environ.get("INCSEG_EMULATE_CUDA", "0") in ("", "0"):
        return
    from incseg_cli.testing import cuda  # imports torch: only when asked for

    if cuda.active() is None:
        emulation = cuda.install_from_env()
        if emulation is not None and _speaks():
            gpu = emulation.gpus[0]
            print(f"note: CUDA emulated on the CPU ({len(emulation.gpus)} x sm{gpu.major}{gpu.minor}, "
                  "INCSEG_EMULATE_CUDA): a test harness, not a GPU run", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """The ``incseg`` command (``argv`` None: ``sys.argv``). A caller that passes ``argv``
    runs the CLI inside its own process and gets its signal handlers back afterwards; the
    command itself keeps ours to the end, so that a signal during exit (torchrun forwards
    one) cannot cut short the release of locks and workers."""
    previous = signals.install()
    try:
        try:
            _emulate_cuda_if_asked()
            _main(argv)
        except SystemExit as stop:
            code = stop.code
        if argv is None:
            try:
                # A stop signal waits for the clean-up (raised inside gc.collect() it would cut
                # it short with a traceback) and then makes the exit 130. From there on the
                # outcome is settled and stop signals are ignored: Python's own exit would
                # restore their default action, and one arriving then would kill the process
                # (-2) after it has done its work.
                with signals.blocked():
                    _end_workers()
                    stopped = set(signal.sigpending()) & set(signals.STOP_SIGNALS)
                    for sig in signals.STOP_SIGNALS:
                        signal.signal(sig, signal.SIG_IGN)
            except KeyboardInterrupt as err:
                _interrupted(err)
            if stopped:
                _interrupted(None)
        sys.exit(code)
    finally:
        if argv is not None:
            signals.restore(previous)


def _main(argv: list[str] | None) -> None:
    debug = bool(os.environ.get("INCSEG_DEBUG"))
    try:
        with lazy_commands():
            code = app(args=argv, standalone_mode=False)
    except SystemExit:
        raise
    except IncsegError as err:
        if debug:
            raise
        _fail(err)
    except KeyboardInterrupt as err:
        _interrupted(err)
    except Exception as err:  # click usage errors are handled below; anything else is a bug
        if isinstance(err, _CLICK_EXCEPTION):
            _fail_usage(err)
        if isinstance(err, (_CLICK_ABORT, typer.Abort)):
            _interrupted(err.__context__ or err.__cause__)
        if debug:
            raise
        died = signals.worker_death(err)  # torch raises it from its SIGCHLD handler, wherever we are
        if died is not None:
            _fail(died)
        # A full disk or a read-only file system can only be about an output, wherever it surfaced.
        mapped = (output_error(err, str(err.filename) if err.filename is not None else "the output")
                  if isinstance(err, OSError) else None)
        if mapped is not None and err.errno in ALWAYS_OUTPUT_ERRNOS:
            _fail(mapped)
        print(
            f"error: internal error ({type(err).__name__}: {_one_line(str(err))}); "
            "rerun with INCSEG_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)
    # Without standalone mode click returns the exit code of ``typer.Exit``/``--help``;
    # typer turns a KeyboardInterrupt (our ``signals.Stop``) into exit code 130.
    if code == EXIT_INTERRUPTED:
        received = signals.stop_requested()
        _interrupted(signals.Stop(received) if received is not None else None)
    sys.exit(code if isinstance(code, int) else 0)

"""Command-line entry point: thin commands that parse, validate and call library code.

``main`` turns every user error into one line on stderr and its documented exit code.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import sys
from typing import NoReturn

import typer

from incseg_cli.cli.app import app
from incseg_cli import signals
from incseg_cli.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    ForwardedError,
    IncsegError,
    Interrupted,
)
from incseg_cli.fileio import ALWAYS_OUTPUT_ERRNOS, output_error

# Command modules register themselves on ``app`` when imported.
from incseg_cli.cli import info_cmds, step_cmds, train_cmds  # noqa: F401,E402
from incseg_cli.cli import toy_cmds  # noqa: F401,E402
from incseg_cli.cli import data_cmds  # noqa: F401,E402
from incseg_cli.cli import alife_cmds  # noqa: F401,E402
from incseg_cli.cli import report_cmds  # noqa: F401,E402
from incseg_cli.cli import status_cmds  # noqa: F401,E402
from incseg_cli.cli import predict_cmds  # noqa: F401,E402


# typer vendors click in some releases and depends on it in others: find its base class.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
# click turns KeyboardInterrupt into its own Abort when not in standalone mode.
_CLICK_ABORT = getattr(sys.modules[_CLICK_EXCEPTION.__module__], "Abort", typer.Abort)


# Advice torch appends to its compiler errors, after the line that says what went wrong.
_TORCH_BOILERPLATE = ("Set TORCHDYNAMO_VERBOSE=1", "For even more developer context", "You can suppress this exception")


def _one_line(text: str) -> str:
    """The last line of a message: an error re-raised from a DataLoader worker carries the
    worker's traceback text, ending in ``incseg_cli.errors.InputError: <message>``."""
    lines = [line.strip() for line in str(text).strip().splitlines()
             if line.strip() and not line.strip().startswith(_TORCH_BOILERPLATE)]
    last = lines[-1] if lines else ""
    return re.sub(r"^incseg_cli\.errors\.\w+: ", "", last)


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
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
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
            _end_workers()
        sys.exit(code)
    finally:
        if argv is not None:
            signals.restore(previous)


def _main(argv: list[str] | None) -> None:
    debug = bool(os.environ.get("INCSEG_DEBUG"))
    try:
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

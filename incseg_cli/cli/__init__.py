"""Command-line entry point: thin commands that parse, validate and call library code.

``main`` turns every user error into one line on stderr and its documented exit code.
"""

from __future__ import annotations

import os
import re
import sys

import typer

from incseg_cli.cli.app import app
from incseg_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, IncsegError, Interrupted

# Command modules register themselves on ``app`` when imported.
from incseg_cli.cli import info_cmds, step_cmds, train_cmds  # noqa: F401,E402
from incseg_cli.cli import toy_cmds  # noqa: F401,E402
from incseg_cli.cli import data_cmds  # noqa: F401,E402
from incseg_cli.cli import alife_cmds  # noqa: F401,E402
from incseg_cli.cli import report_cmds  # noqa: F401,E402


# typer vendors click in some releases and depends on it in others: find its base class.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
# click turns KeyboardInterrupt into its own Abort when not in standalone mode.
_CLICK_ABORT = getattr(sys.modules[_CLICK_EXCEPTION.__module__], "Abort", typer.Abort)


def _one_line(text: str) -> str:
    """The last line of a message: an error re-raised from a DataLoader worker carries the
    worker's traceback text, ending in ``incseg_cli.errors.InputError: <message>``."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return re.sub(r"^incseg_cli\.errors\.\w+: ", "", last)


def _interrupted(err: BaseException | None) -> None:
    detail = _one_line(str(err)) if err is not None else ""
    print(f"interrupted: {detail or 'rerun the same command to resume'}", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    debug = bool(os.environ.get("INCSEG_DEBUG"))
    try:
        code = app(args=argv, standalone_mode=False)
    except SystemExit:
        raise
    except IncsegError as err:
        if debug:
            raise
        prefix = "interrupted" if isinstance(err, Interrupted) else "error"
        print(f"{prefix}: {_one_line(str(err))}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:
        _interrupted(err)
    except Exception as err:  # click usage errors are handled below; anything else is a bug
        if isinstance(err, _CLICK_EXCEPTION):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, (_CLICK_ABORT, typer.Abort)):
            _interrupted(err.__context__ or err.__cause__)
        if debug:
            raise
        print(
            f"error: internal error ({type(err).__name__}: {_one_line(str(err))}); "
            "rerun with INCSEG_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)
    # Without standalone mode click returns the exit code of ``typer.Exit``/``--help``;
    # typer turns a KeyboardInterrupt outside training into exit code 130.
    if code == EXIT_INTERRUPTED:
        _interrupted(None)
    sys.exit(code if isinstance(code, int) else 0)

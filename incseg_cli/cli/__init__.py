"""Command-line entry point: thin commands that parse, validate and call library code.

``main`` turns every user error into one line on stderr and its documented exit code.
"""

from __future__ import annotations

import os
import sys

from incseg_cli.cli.app import app
from incseg_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, IncsegError

# Command modules register themselves on ``app`` when imported.
from incseg_cli.cli import info_cmds  # noqa: F401,E402


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> None:
    debug = bool(os.environ.get("INCSEG_DEBUG"))
    try:
        code = app(args=argv, standalone_mode=False)
    except SystemExit:
        raise
    except IncsegError as err:
        if debug:
            raise
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:  # click usage errors are handled below; anything else is a bug
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        if debug:
            raise
        print(
            f"error: internal error ({type(err).__name__}: {_one_line(str(err))}); "
            "rerun with INCSEG_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)
    # Without standalone mode click returns the exit code of ``typer.Exit``/``--help``.
    sys.exit(code if isinstance(code, int) else 0)

"""Plain Typer options shared by commands beside their declared ones (what a command prints,
not what the library function computes)."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

JsonOut = Annotated[bool, typer.Option("--json", metavar="", help="Print the metrics as one JSON document on stdout.")]


def json_option(what: str) -> inspect.Parameter:
    """``--json`` of a declared command (``parsed.extra["json_out"]``): print ``what`` on stdout."""
    return inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False,
                             annotation=Annotated[bool, typer.Option("--json", metavar="", help=f"Print {what} on stdout.")])

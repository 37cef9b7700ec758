"""Plain Typer options shared by commands beside their declared ones (what a command prints,
not what the library function computes)."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOut = Annotated[bool, typer.Option("--json", metavar="", help="Print the metrics as one JSON document on stdout.")]

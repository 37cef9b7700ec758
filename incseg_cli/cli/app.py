"""The Typer application that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="incseg",
    help=(
        "Class-incremental semantic segmentation: WILSON, ALIFE and their baselines as "
        "separate stages that hand results to each other through files.\n\n"
        "Data goes to stdout (--json), logs and progress to stderr. Exit codes are listed in "
        "README ('Exit codes')."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown joins the wrapped lines of docstrings into paragraphs.
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

"""The Typer application that every command module registers on."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from incseg_cli import __version__

# ``incseg --help`` lists the commands in the order one uses them, not alphabetically.
WORKFLOW = (
    "make-toy-data", "init-dataset", "check-data", "list-tasks", "prepare-splits",
    "train-base", "train-step", "extract-features", "fit-rotations", "rotate-bank", "finetune-classifier",
    "evaluate", "predict", "export", "report", "status", "inspect",
)


def _plain_flags(command: Any, ctx: typer.Context) -> Any:
    """On/off flags (``--help``, ``--json``) take no value: ``--help`` shows none (not ``<bool>``)."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return command


class WorkflowGroup(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: (WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW), n))

    def get_command(self, ctx: typer.Context, name: str) -> Any:
        command = super().get_command(ctx, name)
        return _plain_flags(command, ctx) if command is not None else None

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        _plain_flags(self, ctx)
        super().format_help(ctx, formatter)


app = typer.Typer(
    name="incseg",
    cls=WorkflowGroup,
    help=(
        "Class-incremental semantic segmentation: WILSON, ALIFE, PLOP, MiB and fine-tuning as "
        "separate stages that hand results to each other through files.\n\n"
        "Data goes to stdout (--json), logs and progress to stderr. Exit codes are listed in "
        "README ('Exit codes'). Shell completion: `incseg --install-completion`."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Markdown joins the wrapped lines of docstrings into paragraphs.
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"incseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", metavar="", is_eager=True, callback=_show_version,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """--version; the application's help is the ``help`` given to ``typer.Typer``."""

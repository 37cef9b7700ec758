"""The Typer application that every command module registers on.

``incseg`` imports a command's module only when that command runs (``lazy_commands``): the
training commands' modules import torch, seconds that ``--help``, ``--version``, ``status``,
``list-tasks`` or ``exit-codes`` must not pay. ``incseg --help`` reads each command's
summary from its module's source instead of importing it.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import importlib
import importlib.resources
from typing import Annotated, Any, Iterator, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from incseg_cli.version import __version__

# ``incseg --help`` lists the commands in the order one uses them, not alphabetically.
WORKFLOW = (
    "doctor", "download", "make-toy-data", "init-dataset", "check-data", "list-tasks", "prepare-splits",
    "train-base", "train-step", "extract-features", "fit-rotations", "rotate-bank", "finetune-classifier",
    "evaluate", "predict", "export", "report", "sweep", "status", "inspect",
)

# The module of ``incseg_cli.cli`` that registers each command.
COMMAND_MODULES = {
    "make-toy-data": "toy_cmds",
    "init-dataset": "data_cmds", "check-data": "data_cmds", "prepare-splits": "data_cmds",
    "list-tasks": "info_cmds", "exit-codes": "info_cmds", "version": "info_cmds",
    "train-base": "train_cmds", "evaluate": "evaluate_cmds",
    "train-step": "step_cmds", "finetune-classifier": "alife_cmds",
    "extract-features": "alife_cmds", "fit-rotations": "alife_cmds", "rotate-bank": "alife_cmds",
    "inspect": "inspect_cmds",
    "predict": "predict_cmds", "export": "predict_cmds",
    "report": "report_cmds", "sweep": "sweep_cmds",
    "status": "status_cmds",
    "doctor": "doctor_cmds",
    "download": "download_cmds",
}

# Off (every command built with the group) for callers that build the group themselves and
# look at its ``commands``; ``main`` turns it on for one invocation.
_LAZY = contextvars.ContextVar("incseg_lazy_commands", default=False)


@contextlib.contextmanager
def lazy_commands() -> Iterator[None]:
    """Within: the group built by ``app()`` imports a command's module when it is asked for."""
    token = _LAZY.set(True)
    try:
        yield
    finally:
        _LAZY.reset(token)


def command_summary(name: str) -> TyperCommand | None:
    """A stand-in for command ``name`` that only carries its help, the docstring of its
    function in its module's source; None when the source does not show it plainly."""
    module = COMMAND_MODULES.get(name)
    if module is None:
        return None
    try:
        source = importlib.resources.files("incseg_cli.cli").joinpath(f"{module}.py").read_text(encoding="utf-8")
    except OSError:  # e.g. an install that ships byte code only
        return None
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            # @app.command("NAME") or @declared_command(app, "NAME", ...)
            if isinstance(decorator, ast.Call) and any(
                    isinstance(a, ast.Constant) and a.value == name for a in decorator.args[:2]):
                return TyperCommand(name=name, help=ast.get_docstring(node))
    return None


def _plain_flags(command: Any, ctx: typer.Context) -> Any:
    """On/off flags (``--help``, ``--json``) take no value: ``--help`` shows none (not ``<bool>``)."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return command


class WorkflowGroup(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = False
        if not _LAZY.get():
            for name in COMMAND_MODULES:
                self._load(name)

    def _load(self, name: str) -> Any:
        """Command ``name``, its module imported (it registers the command on ``app``) and
        the command built as typer builds the group's."""
        if name in self.commands or name not in COMMAND_MODULES:
            return self.commands.get(name)
        importlib.import_module(f"incseg_cli.cli.{COMMAND_MODULES[name]}")
        info = next(i for i in app.registered_commands if i.name == name)
        command = typer.main.get_command_from_info(
            info, pretty_exceptions_short=app.pretty_exceptions_short, rich_markup_mode=app.rich_markup_mode)
        self.add_command(command, name)
        return command

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = set(super().list_commands(ctx)) | set(COMMAND_MODULES)
        return sorted(names, key=lambda n: (WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW), n))

    def get_command(self, ctx: typer.Context, name: str) -> Any:
        if self._listing and name not in self.commands:
            summary = command_summary(name)
            if summary is not None:
                return summary
        command = self._load(name)
        return _plain_flags(command, ctx) if command is not None else None

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        _plain_flags(self, ctx)
        self._listing = True  # the list of commands needs their summaries, not their modules
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="incseg",
    cls=WorkflowGroup,
    help=(
        "Class-incremental semantic segmentation: WILSON, ALIFE, PLOP, MiB and fine-tuning as "
        "separate stages that hand results to each other through files.\n\n"
        "Data goes to stdout (--json), logs and progress to stderr. Exit codes are listed in "
        "docs/reliability.md. Shell completion: `incseg --install-completion`."
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

"""Commands that describe what the tool knows: tasks, exit codes, version."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from incseg_cli import __version__
from incseg_cli.cli.app import app
from rich.console import Console
from incseg_cli.errors import EXIT_CODES, UsageError
from incseg_cli.tasks import STANDARD_TASKS, get_task


def _step_text(task, step: int) -> str:
    classes = [c for c in task.new_classes(step) if c != 0 or step > 0]
    if len(classes) > 1 and classes == list(range(classes[0], classes[-1] + 1)):
        text = f"{classes[0]}-{classes[-1]}"
    elif len(classes) > 8:
        text = f"{len(classes)} classes ({','.join(map(str, classes[:4]))},...)"
    else:
        text = ",".join(map(str, classes))
    return ("0+" if step == 0 else "") + text


@app.command("list-tasks")
def list_tasks(
    dataset: str = typer.Option(None, help="Only this dataset: voc, coco or ade."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """List the standard tasks and the classes of every step.

    Any A-B or A-B-C... name that adds up to the dataset's classes also works (e.g. voc
    10-5-5); append -ov for the overlapped setting (a step's images may contain future
    classes), without it the split is disjoint.
    """
    if dataset is not None and dataset not in STANDARD_TASKS:
        raise UsageError(f"unknown dataset {dataset!r}; known: {', '.join(STANDARD_TASKS)}")
    datasets = [dataset] if dataset else list(STANDARD_TASKS)
    tasks = [get_task(ds, name) for ds in datasets for name in STANDARD_TASKS.get(ds, [])]
    if as_json:
        print(json.dumps([t.to_json() for t in tasks], indent=2))
        return
    table = Table(title="tasks (step 0 includes background 0)")
    for col in ("dataset", "task", "steps", "classes per step"):
        table.add_column(col)
    for t in tasks:
        steps = " | ".join(_step_text(t, s) for s in range(t.num_steps))
        table.add_row(t.dataset, t.name + ("[-ov]" if t.num_steps > 1 else ""), str(t.num_steps), steps)
    Console(soft_wrap=False).print(table)


@app.command("exit-codes")
def exit_codes() -> None:
    """Print the exit codes of every command and what they mean."""
    for code, meaning in sorted(EXIT_CODES.items()):
        print(f"{code}\t{meaning}")


@app.command("version")
def version() -> None:
    """Print the incseg version."""
    print(__version__)

"""Commands that describe what the tool knows: tasks, exit codes, version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from incseg_cli import __version__
from incseg_cli.cli.app import app
from rich.console import Console
from incseg_cli.errors import EXIT_CODES
from incseg_cli.tasks import get_task, standard_tasks


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
    dataset: Optional[str] = typer.Option(None, "--dataset", metavar="[voc|coco|ade|NAME]", show_default=False,
                                          help="Only this dataset: voc, coco, ade, or one of your own (with --data). "
                                               "[default: all, or the one --data describes]"),
    data: Optional[Path] = typer.Option(None, "--data", show_default=False,
                                        help="A root with incseg-dataset.json: list its dataset's tasks."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """List the standard tasks and the classes of every step.

    Any A-B or A-B-C... name that adds up to the dataset's classes also works (e.g. voc 10-5-5); append -ov for the overlapped setting (a step's images may contain future classes), without it the split is disjoint. A dataset of your own also has the tasks its description names by class.

    **Examples**

    ```
    incseg list-tasks --dataset voc
    incseg list-tasks --data data/defects --json
    ```
    """
    from incseg_cli import datasets

    if data is not None:
        dataset = datasets.resolve(dataset, data)
    elif dataset is not None:
        datasets.get(dataset)
    names = [dataset] if dataset else datasets.builtin_names()
    tasks = [get_task(ds, name) for ds in names for name in standard_tasks(ds)]
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
    """Print the exit codes of every command and what they mean.

    **Examples**

    ```
    incseg exit-codes
    ```
    """
    for code, meaning in sorted(EXIT_CODES.items()):
        print(f"{code}\t{meaning}")


@app.command("version")
def version() -> None:
    """Print the incseg version (also `incseg --version`).

    **Examples**

    ```
    incseg version
    ```
    """
    print(__version__)
